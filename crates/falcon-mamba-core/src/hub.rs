//! Hugging Face hub ids (`tiiuae/falcon-mamba-7b-instruct`) resolved to a local checkpoint
//! directory in the usual cache (`$HF_HOME/hub`), downloading what is missing with a progress bar.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;

use crate::checkpoint::is_shard_name;
use crate::error::{Error, Result};
use crate::text_file::{read_text, MAX_CONFIG_BYTES};

/// Files a checkpoint directory may hold besides the weights; absent ones are skipped.
const OPTIONAL_FILES: [&str; 4] = [
    "generation_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// A local directory as is, or a hub id downloaded (config, tokenizer, weights) into the cache;
/// returns the directory to load from.
pub fn resolve(model: &str) -> Result<PathBuf> {
    if Path::new(model).is_dir() {
        return Ok(PathBuf::from(model));
    }
    let hub_error = |reason: String| Error::Hub {
        id: model.to_string(),
        reason,
    };
    let is_hub_id = model.split('/').count() == 2
        && !model.starts_with(['.', '/', '~'])
        && !model.contains('\\');
    if !is_hub_id {
        return Err(Error::io(
            model,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such checkpoint directory (and not a hub id of the form owner/name)",
            ),
        ));
    }
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub_error(e.to_string()))?;
    let repo = api.model(model.to_string());
    let config = repo
        .get("config.json")
        .map_err(|e| hub_error(e.to_string()))?;
    repo.get("tokenizer.json")
        .map_err(|e| hub_error(e.to_string()))?;
    for file in OPTIONAL_FILES {
        // Optional files: a checkpoint without them is complete.
        let _ = repo.get(file);
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = read_text(&index, MAX_CONFIG_BYTES)?;
            let parsed: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index.clone(),
                    source,
                })?;
            let mut shards: Vec<&str> = parsed["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            // Names are checked before any download: one such as `x#/../..` would reach
            // outside the repository's URL and the cache directory.
            if let Some(bad) = shards.iter().find(|s| !is_shard_name(s)) {
                return Err(Error::InvalidIndex {
                    path: index,
                    reason: format!("shard name {bad:?} is not a file name"),
                });
            }
            for shard in shards {
                repo.get(shard).map_err(|e| hub_error(e.to_string()))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors")
                .map_err(|e| hub_error(e.to_string()))?;
        }
    }
    Ok(config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}
