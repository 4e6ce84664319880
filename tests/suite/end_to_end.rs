//! End to end on tests/models/tiny-falcon-vocab (bf16 weights, the real Falcon tokenizer):
//! text → ids → greedy ids → text, against transformers' expected.json.

use falcon_mamba::{FalconMamba, GenerationConfig, Tokenizer};

use crate::common::{device, tiny_model, values, B};

#[test]
fn tiny_falcon_vocab_matches_transformers() {
    let dir = tiny_model();
    let model = FalconMamba::<B>::from_pretrained(&dir, &device::<B>()).unwrap();
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let new_ids: Vec<u32> = serde_json::from_value(case["greedy_new_ids"].clone()).unwrap();
        let new_text = case["greedy_new_text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(prompt).unwrap(),
            ids,
            "{prompt:?}: prompt ids"
        );

        // EOS stopping off, as in the reference.
        let config = GenerationConfig::default().with_max_new_tokens(new_ids.len());
        let generated: Vec<u32> = model
            .generate(&[&ids], &config)
            .unwrap()
            .map(|step| step.unwrap()[0].unwrap())
            .collect();
        assert_eq!(generated, new_ids, "{prompt:?}: greedy ids");
        assert_eq!(
            tokenizer.decode(&generated).unwrap(),
            new_text,
            "{prompt:?}: text"
        );
        let streamed: String = model
            .generate_text(&tokenizer, prompt, &config)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(streamed, new_text, "{prompt:?}: streamed text");

        // The last-position logits' top 5 against transformers' values.
        let mut state = model.new_state(1);
        let logits = model
            .prefill(
                model.input_ids(&[&ids]).unwrap(),
                &mut state,
                Default::default(),
            )
            .unwrap();
        let logits = values(logits);
        let top_ids: Vec<u32> =
            serde_json::from_value(case["last_logits_top5_ids"].clone()).unwrap();
        let top_values: Vec<f32> =
            serde_json::from_value(case["last_logits_top5_values"].clone()).unwrap();
        for (id, value) in top_ids.iter().zip(top_values) {
            let diff = (logits[*id as usize] - value).abs();
            assert!(diff <= 1e-4, "{prompt:?}: logit of {id} off by {diff:e}");
        }
    }
}

#[test]
fn generation_config_json_gives_the_eos_ids() {
    let dir = tiny_model();
    let config = GenerationConfig::from_file(dir.join("generation_config.json")).unwrap();
    assert_eq!(config.eos_token_ids, vec![11]);
    assert!(!config.do_sample, "no do_sample in the file means greedy");
}

#[test]
fn generation_stops_at_the_eos_ids_of_generation_config_json() {
    let dir = tiny_model();
    let model = FalconMamba::<B>::from_pretrained(&dir, &device::<B>()).unwrap();
    // "Hello today" greedily produces 44275 forever: make it the file's eos id.
    let scratch = crate::common::scratch_dir("eos-config");
    std::fs::write(
        scratch.join("generation_config.json"),
        r#"{"eos_token_id": [11, 44275], "max_new_tokens": 10}"#,
    )
    .unwrap();
    let config = GenerationConfig::from_file(scratch.join("generation_config.json")).unwrap();
    let steps: Vec<_> = model
        .generate(&[[9856u32, 1722]], &config)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(steps, vec![vec![Some(44275)]]);
}
