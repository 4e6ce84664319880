//! Serving many sequences: ragged batches, the continuous-batching scheduler and the
//! conversation-state cache, each against the same sequences run alone.
//!
//! Tolerances: logits ≤ 1e-4 (as the prefill suite: rows fed in other groupings take other
//! summation orders); token ids exactly equal.

use falcon_mamba::model::serving::{Event, FinishReason, SequenceId};
use falcon_mamba::{
    FalconMamba, GenerationConfig, Prefill, Scheduler, SchedulerConfig, SelectiveScanBackend,
    StateCache, Tokenizer,
};

use crate::common::{
    dtype_under_test, fixture_dirs, load_in, max_abs_diff, on_backend_under_test, tiny_model,
};

const LOGITS_TOL: f32 = 1e-4;

/// A deterministic prompt of `len` ids below `vocab`.
fn prompt(len: usize, vocab: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7919 + salt * 104_729 + 13) % vocab as u32)
        .collect()
}

/// Greedy tokens of one prompt generated alone.
fn alone<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Vec<u32> {
    model
        .generate(&[prompt], config)
        .unwrap()
        .map_while(|step| step.unwrap()[0])
        .collect()
}

#[test]
fn ragged_rows_equal_each_row_alone() {
    on_backend_under_test!(ragged_rows_on);
}

fn ragged_rows_on<B: SelectiveScanBackend>() {
    let lengths = [1, 5, 17];
    for dir in fixture_dirs() {
        let model = load_in::<B>(&dir, dtype_under_test());
        let vocab = model.config().vocab_size;
        let prompts: Vec<Vec<u32>> = (0u32..)
            .zip(lengths)
            .map(|(salt, len)| prompt(len, vocab, salt))
            .collect();
        let mut state = model.new_state(prompts.len());
        let logits = model
            .prefill_rows(&prompts, &mut state, Prefill::Parallel)
            .unwrap(); // [3, vocab]
        for (row, p) in prompts.iter().enumerate() {
            let mut own = model.new_state(1);
            let expected = model
                .prefill(model.input_ids(&[p]).unwrap(), &mut own, Prefill::Parallel)
                .unwrap();
            let diff = max_abs_diff(logits.clone().narrow(0, row, 1), expected);
            println!(
                "ragged {:<24} row of {:>2} tokens: logits max abs diff {diff:.3e}",
                dir.display(),
                p.len()
            );
            assert!(diff <= LOGITS_TOL, "{} row {row}: {diff:e}", dir.display());
        }

        let config = GenerationConfig::default().with_max_new_tokens(8);
        let together: Vec<Vec<u32>> = {
            let mut rows = vec![Vec::new(); prompts.len()];
            for step in model.generate(&prompts, &config).unwrap() {
                for (row, id) in step.unwrap().into_iter().enumerate() {
                    rows[row].extend(id);
                }
            }
            rows
        };
        for (row, p) in prompts.iter().enumerate() {
            assert_eq!(
                together[row],
                alone(&model, p, &config),
                "{} row {row}",
                dir.display()
            );
        }
    }
}

/// Runs the scheduler until idle, adding `late` sequences after the given step numbers; returns
/// every sequence's tokens and how it finished.
fn run_schedule<B: SelectiveScanBackend>(
    scheduler: &mut Scheduler<'_, B>,
    mut late: Vec<(usize, Vec<u32>, GenerationConfig)>,
) -> Vec<(SequenceId, Vec<u32>, FinishReason)> {
    let mut out: Vec<(SequenceId, Vec<u32>, Option<FinishReason>)> = Vec::new();
    let mut step = 0;
    while !(scheduler.is_idle() && late.is_empty()) {
        while late.first().is_some_and(|(at, _, _)| *at <= step) {
            let (_, prompt, config) = late.remove(0);
            let id = scheduler.add(prompt, &config).unwrap();
            out.push((id, Vec::new(), None));
        }
        for event in scheduler.step().unwrap() {
            let (Event::Token { id, .. } | Event::Finished { id, .. }) = event;
            let entry = out.iter_mut().find(|(i, _, _)| *i == id).unwrap();
            match event {
                Event::Token { token, .. } => entry.1.push(token),
                Event::Finished { reason, .. } => entry.2 = Some(reason),
            }
        }
        step += 1;
        assert!(step < 1000, "the scheduler did not finish");
    }
    out.into_iter()
        .map(|(id, tokens, reason)| (id, tokens, reason.expect("every sequence finishes")))
        .collect()
}

#[test]
fn sequences_joining_and_leaving_get_their_own_tokens() {
    on_backend_under_test!(joining_and_leaving_on);
}

fn joining_and_leaving_on<B: SelectiveScanBackend>() {
    let model = load_in::<B>(&tiny_model(), dtype_under_test());
    let vocab = model.config().vocab_size;
    let greedy = |n| GenerationConfig::default().with_max_new_tokens(n);
    let sampled = GenerationConfig::default()
        .with_max_new_tokens(9)
        .with_temperature(0.8)
        .with_top_p(0.9)
        .with_seed(11);
    let first = prompt(17, vocab, 0);
    // A stop id that it meets after a few tokens: it leaves early.
    let (stopper, stop_at) = {
        let p = prompt(5, vocab, 1);
        let free = alone(&model, &p, &greedy(20));
        let at = (2..free.len())
            .find(|&k| !free[..k].contains(&free[k]))
            .expect("a new token among 20");
        ((p, greedy(20).with_eos_token_ids(vec![free[at]])), at)
    };
    let late = vec![
        (0, first.clone(), greedy(12)),
        (2, stopper.0.clone(), stopper.1.clone()),
        (3, prompt(1, vocab, 2), sampled.clone()),
        (3, prompt(40, vocab, 3), greedy(4)),
        (5, prompt(9, vocab, 4), greedy(6)),
    ];
    // Two rows and four prompt tokens a step: sequences wait for rows, prompts take several steps.
    let config = SchedulerConfig::default()
        .with_max_batch(2)
        .with_prefill_chunk(4);
    let mut scheduler = Scheduler::new(&model, config).unwrap();
    let results = run_schedule(&mut scheduler, late.clone());
    for ((_, prompt, config), (id, tokens, reason)) in late.iter().zip(&results) {
        let expected = alone(&model, prompt, config);
        assert_eq!(tokens, &expected, "{id} (prompt of {})", prompt.len());
        let want = if config.eos_token_ids.is_empty() {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        assert_eq!(*reason, want, "{id}");
    }
    assert_eq!(
        results[1].1.len(),
        stop_at + 1,
        "the stop id ends its sequence"
    );

    // Stopping a running sequence frees its row; the others go on unchanged.
    let mut scheduler = Scheduler::new(&model, SchedulerConfig::default()).unwrap();
    let a = scheduler.add(first.clone(), &greedy(10)).unwrap();
    let b = scheduler.add(prompt(5, vocab, 1), &greedy(10)).unwrap();
    let mut tokens_a = Vec::new();
    for step in 0..10 {
        if step == 3 {
            // Step 0 fed the prompts, sampled the first tokens and decoded the second ones.
            let stopped = scheduler.stop(b);
            assert!(
                matches!(stopped, Some(Event::Finished { id, reason: FinishReason::Stopped, generated_tokens: 4, .. }) if id == b),
                "{stopped:?}"
            );
            assert!(scheduler.stop(b).is_none());
        }
        for event in scheduler.step().unwrap() {
            match event {
                Event::Token { id, token } if id == a => tokens_a.push(token),
                Event::Token { id, .. } => assert!(id == b && step < 3, "{id} at step {step}"),
                Event::Finished { .. } => {}
            }
        }
    }
    assert!(scheduler.is_idle());
    assert_eq!(tokens_a, alone(&model, &first, &greedy(10)));
}

#[test]
fn a_cached_conversation_feeds_only_new_tokens() {
    on_backend_under_test!(cached_conversation_on);
}

fn cached_conversation_on<B: SelectiveScanBackend>() {
    let model = load_in::<B>(&tiny_model(), dtype_under_test());
    let vocab = model.config().vocab_size;
    let config = GenerationConfig::default().with_max_new_tokens(6);
    let scheduler_config = SchedulerConfig::default().with_cache_bytes(64 << 20);
    let mut scheduler = Scheduler::new(&model, scheduler_config).unwrap();

    let turn1 = prompt(12, vocab, 5);
    let first = run_schedule(&mut scheduler, vec![(0, turn1.clone(), config.clone())]);
    let fed_before = scheduler.stats().prompt_tokens_fed;
    assert_eq!(fed_before, 12);

    // The next turn: everything so far, then new tokens.
    let new = prompt(7, vocab, 6);
    let turn2: Vec<u32> = turn1
        .iter()
        .chain(&first[0].1)
        .chain(&new)
        .copied()
        .collect();
    let mut scheduler_events = Vec::new();
    let id = scheduler.add(turn2.clone(), &config).unwrap();
    while !scheduler.is_idle() {
        scheduler_events.extend(scheduler.step().unwrap());
    }
    let stats = scheduler.stats();
    // The state had read the prompt and every generated token but the last.
    let cached = turn1.len() + first[0].1.len() - 1;
    assert_eq!(
        stats.prompt_tokens_fed - fed_before,
        (turn2.len() - cached) as u64
    );
    assert_eq!(stats.cache.hits, 1);
    assert_eq!(stats.cache.tokens_reused, cached as u64);
    assert!(scheduler_events.contains(&Event::Finished {
        id,
        reason: FinishReason::Length,
        prompt_tokens: turn2.len(),
        cached_tokens: cached,
        generated_tokens: 6,
    }));
    let tokens: Vec<u32> = scheduler_events
        .iter()
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, alone(&model, &turn2, &config));

    // The restored state continues to the cold run's logits.
    let (len, mut state) = scheduler.cache().lookup(&turn2).unwrap();
    assert_eq!(len, cached);
    let warm = model
        .prefill(
            model.input_ids(&[&turn2[len..]]).unwrap(),
            &mut state,
            Prefill::Parallel,
        )
        .unwrap();
    let mut cold_state = model.new_state(1);
    let cold = model
        .prefill(
            model.input_ids(&[&turn2]).unwrap(),
            &mut cold_state,
            Prefill::Parallel,
        )
        .unwrap();
    let diff = max_abs_diff(warm, cold);
    assert!(diff <= LOGITS_TOL, "restored vs cold logits: {diff:e}");
}

#[test]
fn text_prompts_resume_from_cached_text() {
    let model = load_in::<crate::common::B>(&tiny_model(), None);
    let tokenizer = Tokenizer::from_file(tiny_model().join("tokenizer.json")).unwrap();
    let config = GenerationConfig::default().with_max_new_tokens(5);
    let mut scheduler =
        Scheduler::new(&model, SchedulerConfig::default().with_cache_bytes(1 << 26))
            .unwrap()
            .with_tokenizer(&tokenizer);
    let turn1 = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n";
    let (_, n1) = scheduler.add_text(turn1, &config).unwrap();
    let mut generated = Vec::new();
    while !scheduler.is_idle() {
        for event in scheduler.step().unwrap() {
            if let Event::Token { token, .. } = event {
                generated.push(token);
            }
        }
    }
    // The client sends the reply back as text inside the next rendered prompt.
    let reply = tokenizer.decode(&generated).unwrap();
    let turn2 = format!("{turn1}{reply}<|im_end|>\n<|im_start|>user\nAnd again<|im_end|>\n");
    let before = scheduler.stats().prompt_tokens_fed;
    let (_, n2) = scheduler.add_text(&turn2, &config).unwrap();
    while !scheduler.is_idle() {
        scheduler.step().unwrap();
    }
    let stats = scheduler.stats();
    assert_eq!(stats.cache.hits, 1);
    let cached = n1 + generated.len() - 1;
    assert_eq!(stats.prompt_tokens_fed - before, (n2 - cached) as u64);
}

#[test]
fn the_cache_stays_within_its_budget() {
    let model = load_in::<crate::common::B>(&tiny_model(), None);
    let state_bytes = model.new_state(1).size_in_bytes();
    let mut cache = StateCache::new(state_bytes * 5 / 2);
    for salt in 0..3 {
        cache.insert(&prompt(4, 100, salt), model.new_state(1), None);
        assert!(cache.stats().bytes <= cache.budget());
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.evictions), (2, 1));
    // The oldest went first; a lookup needs a proper prefix.
    let extended = |salt| [prompt(4, 100, salt), vec![1]].concat();
    assert!(cache.lookup(&extended(0)).is_none());
    assert_eq!(cache.lookup(&extended(1)).map(|(n, _)| n), Some(4));
    assert!(cache.lookup(&prompt(4, 100, 2)).is_none());
    // A hit makes an entry recent: the next insertion evicts the other one.
    cache.insert(&prompt(4, 100, 3), model.new_state(1), None);
    assert!(cache.lookup(&extended(1)).is_some());
    assert!(cache.lookup(&extended(2)).is_none());
    let stats = cache.stats();
    assert_eq!((stats.queries, stats.hits), (5, 2));
    // A state larger than the budget is not kept.
    let mut small = StateCache::new(state_bytes - 1);
    small.insert(&[1, 2], model.new_state(1), None);
    assert_eq!(small.stats().entries, 0);
}

#[test]
fn threads_sharing_one_model_get_the_tokens_of_one_thread_alone() {
    type B = crate::common::B;
    let model = FalconMamba::<B>::from_pretrained(
        crate::common::fixture("tiny"),
        &crate::common::device::<B>(),
    )
    .unwrap();
    let config = GenerationConfig::default()
        .with_max_new_tokens(12)
        .with_temperature(0.8)
        .with_seed(3);
    let prompts: Vec<Vec<u32>> = (0..4u32).map(|t| vec![1 + t, 20 + t, 7]).collect();
    let one_thread: Vec<Vec<u32>> = prompts.iter().map(|p| alone(&model, p, &config)).collect();
    let together: Vec<Vec<u32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| scope.spawn(|| alone(&model, p, &config)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, one_thread);
}
