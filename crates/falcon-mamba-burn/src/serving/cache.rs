//! The conversation-state cache: one-row states keyed by the tokens they have read, so a request
//! that extends an earlier one (the next chat turn, a shared system prompt) restores the state
//! and feeds only what is new. Least recently used entries go first when a byte budget is full.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;

use burn::prelude::*;

use crate::state::State;

/// What the cache has done so far (counters since it was made) and holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups.
    pub queries: u64,
    /// Lookups that restored a state.
    pub hits: u64,
    /// Tokens that restored states had already read: tokens hits saved feeding.
    pub tokens_reused: u64,
    /// States stored.
    pub insertions: u64,
    /// States dropped to stay within the budget.
    pub evictions: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes of state held now.
    pub bytes: usize,
}

/// One cached state.
struct Entry<B: Backend> {
    /// The tokens the state has read.
    tokens: Vec<u32>,
    /// Their text, when the caller knows it (see [`StateCache::longest_text_prefix`]).
    text: Option<String>,
    state: State<B>,
    bytes: usize,
    last_used: u64,
}

/// States of single sequences keyed by token prefix, within a byte budget (least recently used
/// out first). Works with any backend: the states stay where they are.
pub struct StateCache<B: Backend> {
    budget: usize,
    /// Keyed by (number of tokens, hash of the tokens); the tokens themselves are compared on a
    /// hit, so a hash collision is only a miss.
    entries: HashMap<(usize, u64), Entry<B>>,
    /// How many entries have each token count: the prefix lengths a lookup tries.
    lengths: BTreeMap<usize, usize>,
    clock: u64,
    stats: CacheStats,
}

impl<B: Backend> StateCache<B> {
    /// An empty cache that holds at most `budget_bytes` of state (0: it keeps nothing).
    pub fn new(budget_bytes: usize) -> Self {
        StateCache {
            budget: budget_bytes,
            entries: HashMap::new(),
            lengths: BTreeMap::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Counters and current size.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Stores the state of one sequence (`state` has one row) that has read `tokens`, with their
    /// text if known. Replaces an entry for the same tokens; evicts the least recently used
    /// entries until it fits. A state larger than the whole budget is not stored.
    pub fn insert(&mut self, tokens: &[u32], state: State<B>, text: Option<String>) {
        let bytes = state.size_in_bytes();
        if tokens.is_empty() || bytes > self.budget || state.batch_size() != 1 {
            return;
        }
        let key = (tokens.len(), hash(tokens));
        self.remove(key);
        while self.stats.bytes + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.remove(oldest);
            self.stats.evictions += 1;
        }
        self.clock += 1;
        self.entries.insert(
            key,
            Entry {
                tokens: tokens.to_vec(),
                text,
                state,
                bytes,
                last_used: self.clock,
            },
        );
        *self.lengths.entry(tokens.len()).or_default() += 1;
        self.stats.insertions += 1;
        self.stats.entries += 1;
        self.stats.bytes += bytes;
    }

    /// The state of the longest cached proper prefix of `tokens` and its length: the caller feeds
    /// `tokens[len..]`, at least one token, so it gets the logits after the last one. Counts a
    /// query, and a hit when found.
    pub fn lookup(&mut self, tokens: &[u32]) -> Option<(usize, State<B>)> {
        self.stats.queries += 1;
        let mut hasher = DefaultHasher::new();
        let mut best = None;
        let mut hashed = 0;
        for (&len, _) in self.lengths.range(1..tokens.len()) {
            for &t in &tokens[hashed..len] {
                hasher.write_u32(t);
            }
            hashed = len;
            let key = (len, hasher.finish());
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.tokens == tokens[..len])
            {
                best = Some(key);
            }
        }
        let key = best?;
        self.clock += 1;
        let entry = self.entries.get_mut(&key)?;
        entry.last_used = self.clock;
        self.stats.hits += 1;
        self.stats.tokens_reused += key.0 as u64;
        Some((key.0, entry.state.clone()))
    }

    /// The tokens of the entry whose text is the longest prefix of `text`, and that text's
    /// length in bytes. A server that renders a whole conversation as text tokenizes it as those
    /// tokens followed by the rest of the text, so the lookup finds the state even where
    /// re-tokenizing generated text would not give back the generated ids.
    pub fn longest_text_prefix(&self, text: &str) -> Option<(&[u32], usize)> {
        self.entries
            .values()
            .filter_map(|e| {
                let t = e.text.as_deref()?;
                text.starts_with(t)
                    .then_some((e.tokens.as_slice(), t.len()))
            })
            .max_by_key(|&(_, len)| len)
    }

    fn remove(&mut self, key: (usize, u64)) {
        let Some(entry) = self.entries.remove(&key) else {
            return;
        };
        if let Some(count) = self.lengths.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                self.lengths.remove(&key.0);
            }
        }
        self.stats.entries -= 1;
        self.stats.bytes -= entry.bytes;
    }
}

fn hash(tokens: &[u32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for &t in tokens {
        hasher.write_u32(t);
    }
    hasher.finish()
}
