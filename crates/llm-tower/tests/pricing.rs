//! Prices, name resolution, cost arithmetic and configuration.

use llm_tower::pricing::{Cost, ModelPrice, PriceTable, PricingConfig, Unpriced};
use llm_tower::usage::Usage;
use proptest::prelude::*;

const NANOS_PER_USD: u64 = 1_000_000_000;

fn usd(dollars: u64, cents: u64) -> Cost {
    Cost::from_nanos(dollars * NANOS_PER_USD + cents * NANOS_PER_USD / 100)
}

fn cost(model: &str, usage: Usage) -> Cost {
    PriceTable::embedded().cost(model, &usage).unwrap()
}

#[test]
fn a_million_in_and_out_of_gpt_4o_is_exactly_twelve_fifty() {
    let c = cost("gpt-4o", Usage::new(1_000_000, 1_000_000));
    assert_eq!(c.as_nanos(), 12_500_000_000);
    assert_eq!(c.to_string(), "$12.50");
    assert_eq!(c.as_usd(), 12.5);
}

#[test]
fn the_embedded_table_holds_the_listed_prices() {
    let table = PriceTable::embedded();
    // (model, input, cached input, cache write, output), USD per million.
    type Row = (&'static str, f64, Option<f64>, Option<f64>, f64);
    #[rustfmt::skip]
    let want: &[Row] = &[
        ("gpt-5", 1.25, Some(0.125), None, 10.0),
        ("gpt-5-mini", 0.25, Some(0.025), None, 2.0),
        ("gpt-5-nano", 0.05, Some(0.005), None, 0.40),
        ("gpt-4.1", 2.0, Some(0.50), None, 8.0),
        ("gpt-4.1-mini", 0.40, Some(0.10), None, 1.60),
        ("gpt-4.1-nano", 0.10, Some(0.025), None, 0.40),
        ("gpt-4o", 2.50, Some(1.25), None, 10.0),
        ("gpt-4o-mini", 0.15, Some(0.075), None, 0.60),
        ("o3", 2.0, Some(0.50), None, 8.0),
        ("o4-mini", 1.10, Some(0.275), None, 4.40),
        ("o3-mini", 1.10, Some(0.55), None, 4.40),
        ("o1", 15.0, Some(7.50), None, 60.0),
        ("gpt-3.5-turbo", 0.50, None, None, 1.50),
        ("claude-opus-4-5", 5.0, Some(0.50), Some(6.25), 25.0),
        ("claude-opus-4-1", 15.0, Some(1.50), Some(18.75), 75.0),
        ("claude-opus-4", 15.0, Some(1.50), Some(18.75), 75.0),
        ("claude-sonnet-4-5", 3.0, Some(0.30), Some(3.75), 15.0),
        ("claude-sonnet-4", 3.0, Some(0.30), Some(3.75), 15.0),
        ("claude-3-7-sonnet", 3.0, Some(0.30), Some(3.75), 15.0),
        ("claude-haiku-4-5", 1.0, Some(0.10), Some(1.25), 5.0),
        ("claude-3-5-haiku", 0.80, Some(0.08), Some(1.0), 4.0),
        ("claude-3-haiku", 0.25, Some(0.03), Some(0.30), 1.25),
        ("gemini-2.5-pro", 1.25, Some(0.31), None, 10.0),
        ("gemini-2.5-flash", 0.30, Some(0.075), None, 2.50),
        ("gemini-2.5-flash-lite", 0.10, Some(0.025), None, 0.40),
        ("gemini-2.0-flash", 0.10, Some(0.025), None, 0.40),
        ("gemini-1.5-pro", 1.25, None, None, 5.0),
        ("gemini-1.5-flash", 0.075, None, None, 0.30),
    ];
    for &(model, input, cached, write, output) in want {
        let mut expected = ModelPrice::new(input, output).unwrap();
        if let Some(c) = cached {
            expected = expected.with_cached_input(c).unwrap();
        }
        if let Some(w) = write {
            expected = expected.with_cache_write(w).unwrap();
        }
        let (name, price) = table.resolve(model).unwrap();
        assert_eq!(name, model);
        assert_eq!(price, &expected, "{model}");
    }
    // Every entry has a positive input and output price and resolves to
    // itself (names are unique: the parser rejects duplicates).
    for (model, price) in table.iter() {
        assert!(
            price.input() > Cost::ZERO && price.output() > Cost::ZERO,
            "{model}"
        );
        assert_eq!(table.resolve(model).unwrap().0, model);
    }
    assert_eq!(
        format!("{:?}", table.price("claude-3-haiku").unwrap()),
        "ModelPrice { input: $0.25, output: $1.25, cached_input: $0.03, cache_write: $0.30 }"
    );
    let date = PriceTable::embedded_as_of();
    assert_eq!(date.len(), 10, "{date}");
}

#[test]
fn cached_input_is_discounted() {
    // 1M input of which 600k cached, on gpt-4o: 400k × $2.50 + 600k × $1.25.
    let usage = Usage {
        input_tokens: 1_000_000,
        cached_input_tokens: 600_000,
        ..Usage::default()
    };
    assert_eq!(cost("gpt-4o", usage), usd(1, 75));
    // Without a cached price, cached tokens cost the full input price.
    assert_eq!(cost("gpt-3.5-turbo", usage), usd(0, 50));
}

#[test]
fn anthropic_cache_writes_and_reads() {
    // Sonnet 4.5: 100k uncached at $3, 200k written at $3.75, 700k read at
    // $0.30, 10k output (reasoning included) at $15.
    let usage = Usage {
        input_tokens: 1_000_000,
        cached_input_tokens: 700_000,
        cache_write_tokens: 200_000,
        output_tokens: 10_000,
        reasoning_tokens: 4_000,
    };
    let want = 300_000_000 + 750_000_000 + 210_000_000 + 150_000_000;
    assert_eq!(cost("claude-sonnet-4-5", usage).as_nanos(), want);
    // Cache writes without a write price cost the input price.
    let plain = PriceTable::empty().with_price("m", ModelPrice::new(3.0, 15.0).unwrap());
    let write_only = Usage {
        input_tokens: 1_000_000,
        cache_write_tokens: 1_000_000,
        ..Usage::default()
    };
    assert_eq!(plain.cost("m", &write_only).unwrap(), usd(3, 0));
}

#[test]
fn tiny_counts_round_up_to_the_next_nano_dollar() {
    // gpt-5-nano cached input: $0.005 per million is exactly 5 nano-dollars
    // a token.
    let one_cached = Usage {
        input_tokens: 1,
        cached_input_tokens: 1,
        ..Usage::default()
    };
    assert_eq!(cost("gpt-5-nano", one_cached).as_nanos(), 5);
    // Listed prices have at most three decimals per million, so every
    // listed price is a whole number of nano-dollars a token: $0.075 per
    // million is 75.
    assert_eq!(cost("gemini-1.5-flash", Usage::new(1, 0)).as_nanos(), 75);
    // Finer prices round up, once per call: $0.0025 per million is 2.5
    // nano-dollars a token.
    let fine = PriceTable::empty().with_price(
        "fine",
        ModelPrice::new(0.0025, 0.0001)
            .unwrap()
            .with_cached_input(0.00125)
            .unwrap(),
    );
    let fine_cost = |usage: Usage| fine.cost("fine", &usage).unwrap().as_nanos();
    assert_eq!(fine_cost(Usage::new(1, 0)), 3);
    assert_eq!(fine_cost(Usage::new(2, 0)), 5);
    assert_eq!(fine_cost(Usage::new(0, 1)), 1);
    assert_eq!(fine_cost(Usage::new(0, 10)), 1);
    assert_eq!(fine_cost(Usage::new(0, 11)), 2);
    // Not per part: 1 uncached (2.5) + 1 cached (1.25) = 3.75, rounded to 4.
    let mixed = Usage {
        input_tokens: 2,
        cached_input_tokens: 1,
        ..Usage::default()
    };
    assert_eq!(fine_cost(mixed), 4);
    assert_eq!(cost("gpt-4o", Usage::default()), Cost::ZERO);
}

#[test]
fn dated_and_platform_names_resolve() {
    let table = PriceTable::embedded();
    for (raw, want) in [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        (
            "global.anthropic.claude-haiku-4-5-20251001-v1:0",
            "claude-haiku-4-5",
        ),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-1.5-pro-002", "gemini-1.5-pro"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        (
            "gemini-2.5-flash-lite-preview-06-17",
            "gemini-2.5-flash-lite",
        ),
        ("gemini-2.0-flash-exp", "gemini-2.0-flash"),
        // Priced apart from its alias, and the exact entry wins.
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ] {
        assert_eq!(
            table.resolve(raw).map(|(name, _)| name),
            Some(want),
            "{raw}"
        );
    }
    assert_eq!(
        cost("gpt-4o-2024-05-13", Usage::new(1_000_000, 0)),
        usd(5, 0)
    );
}

#[test]
fn families_never_cross() {
    let table = PriceTable::embedded();
    for (model, dated) in [
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
        ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        ("o3-mini", "o3-mini-2025-01-31"),
        ("gpt-5-nano", "gpt-5-nano-2025-08-07"),
        ("claude-opus-4-1", "claude-opus-4-1-20250805"),
        ("claude-3-5-haiku", "claude-3-5-haiku-20241022"),
        (
            "gemini-2.5-flash-lite",
            "gemini-2.5-flash-lite-preview-06-17",
        ),
    ] {
        assert_eq!(table.resolve(model).unwrap().0, model);
        assert_eq!(table.resolve(dated).unwrap().0, model);
    }
    let mini = table
        .cost("gpt-4o-mini", &Usage::new(1_000_000, 0))
        .unwrap();
    assert_eq!(mini, Cost::from_nanos(150_000_000));
    let nano = table
        .cost("gpt-4.1-nano", &Usage::new(1_000_000, 0))
        .unwrap();
    assert_eq!(nano, Cost::from_nanos(100_000_000));
    // Unknown neighbours are unpriced, not priced as their family.
    for model in [
        "o1-mini",
        "gpt-4o-audio-preview",
        "gpt-5-chat",
        "gpt-3.5-turbo-1106",
        "ft:gpt-4o-mini:org::abc123",
        "gemini-2.5-flash-preview-tts",
        "claude-opus",
        "GPT-4O",
    ] {
        assert!(table.price(model).is_none(), "{model}");
    }
}

#[test]
fn an_unknown_model_is_unpriced_never_free() {
    let table = PriceTable::embedded();
    let err = table
        .cost("my-local-llama", &Usage::new(10, 10))
        .unwrap_err();
    assert_eq!(
        err,
        table.cost("my-local-llama", &Usage::default()).unwrap_err()
    );
    assert_eq!(err.model(), "my-local-llama");
    assert_eq!(err.to_string(), "no price for model `my-local-llama`");
    let boxed: llm_tower::BoxError = Box::new(err);
    assert!(boxed.is::<Unpriced>());
    assert!(
        PriceTable::empty()
            .cost("gpt-4o", &Usage::default())
            .is_err()
    );
}

#[test]
fn overrides_replace_and_extend() {
    let config: PricingConfig = serde_json::from_str(
        r#"{ "models": {
            "gpt-4o": { "input": 2.0, "output": 8.0 },
            "my-model": { "input": 1.0, "output": 2.0, "cached_input": 0.5 }
        } }"#,
    )
    .unwrap();
    let embedded = PriceTable::embedded();
    let table = embedded
        .clone()
        .merge(PriceTable::try_from(config).unwrap());
    assert_eq!(table.len(), embedded.len() + 1);

    let usage = Usage::new(1_000_000, 1_000_000);
    assert_eq!(table.cost("gpt-4o", &usage).unwrap(), usd(10, 0));
    // An override of the alias applies to its snapshots too.
    assert_eq!(table.cost("gpt-4o-2024-08-06", &usage).unwrap(), usd(10, 0));
    // The override replaced the whole price: no cached price is left.
    assert_eq!(table.price("gpt-4o").unwrap().cached_input(), None);
    assert_eq!(table.cost("my-model", &usage).unwrap(), usd(3, 0));
    assert_eq!(table.cost("o3", &usage).unwrap(), usd(10, 0));
    // The embedded table itself is untouched.
    assert_eq!(embedded.cost("gpt-4o", &usage).unwrap(), usd(12, 50));
    assert!(embedded.price("my-model").is_none());

    let one = PriceTable::empty().with_price("x", ModelPrice::new(1.0, 1.0).unwrap());
    let two = one
        .clone()
        .with_price("x", ModelPrice::new(2.0, 2.0).unwrap());
    assert_eq!(one.price("x").unwrap().input(), usd(1, 0));
    assert_eq!(two.price("x").unwrap().input(), usd(2, 0));
    assert_eq!(
        PriceTable::empty().merge(two.clone()).price("x"),
        two.price("x")
    );
}

#[test]
fn bad_config_is_rejected_with_a_clear_message() {
    let invalid = |json: &str| {
        let config: PricingConfig = serde_json::from_str(json).unwrap();
        config.into_table().unwrap_err()
    };
    let err = invalid(r#"{ "models": { "m": { "input": -1.0, "output": 2.0 } } }"#);
    assert_eq!((err.model(), err.field()), (Some("m"), "input"));
    assert_eq!(
        err.to_string(),
        "invalid `input` price for model `m`: -1 is negative"
    );

    let err = invalid(r#"{ "models": { "m": { "input": 1, "output": 2, "cache_write": 1e12 } } }"#);
    assert_eq!(err.field(), "cache_write");
    assert!(err.to_string().contains("for model `m`"), "{err}");

    // JSON has no NaN or infinity, but other formats and code do.
    let nan = PricingConfig {
        models: [(
            "n".to_owned(),
            llm_tower::pricing::ModelPriceConfig {
                input: 1.0,
                output: 1.0,
                cached_input: Some(f64::NAN),
                cache_write: None,
            },
        )]
        .into(),
    };
    let err = nan.into_table().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid `cached_input` price for model `n`: NaN is not a number"
    );
    let err = ModelPrice::new(1.0, f64::INFINITY).unwrap_err();
    assert_eq!(err.to_string(), "invalid `output` price: inf is infinite");
    assert_eq!(err.model(), None);

    let parse = |json: &str| {
        serde_json::from_str::<PricingConfig>(json)
            .unwrap_err()
            .to_string()
    };
    let unknown = parse(r#"{ "models": { "m": { "input": 1, "output": 2, "cache_read": 1 } } }"#);
    assert!(unknown.contains("unknown field `cache_read`"), "{unknown}");
    let top = parse(r#"{ "model": {} }"#);
    assert!(top.contains("unknown field `model`"), "{top}");
    let missing = parse(r#"{ "models": { "m": { "input": 1 } } }"#);
    assert!(missing.contains("missing field `output`"), "{missing}");
    let twice = parse(
        r#"{ "models": { "m": { "input": 1, "output": 2 }, "m": { "input": 0, "output": 0 } } }"#,
    );
    assert!(twice.contains("duplicate model `m`"), "{twice}");

    // An empty config is valid and changes nothing.
    let empty: PricingConfig = serde_json::from_str("{}").unwrap();
    assert!(empty.into_table().unwrap().is_empty());
}

#[test]
fn cost_arithmetic_and_display() {
    assert_eq!(Cost::from_nanos(1_234_000).to_string(), "$0.001234");
    assert_eq!(usd(12, 50).to_string(), "$12.50");
    assert_eq!(usd(3, 0).to_string(), "$3.00");
    assert_eq!(Cost::from_nanos(1_000_000_001).to_string(), "$1.000000001");
    assert_eq!(format!("{:>8}", usd(1, 5)), "   $1.05");
    assert_eq!(Cost::MAX.to_string(), "$18446744073.709551615");

    let mut total = Cost::from_nanos(1);
    total += Cost::from_nanos(2);
    assert_eq!(total + Cost::from_nanos(3), Cost::from_nanos(6));
    assert_eq!(Cost::MAX + Cost::from_nanos(1), Cost::MAX);
    let costs = [Cost::from_nanos(5), Cost::from_nanos(7)];
    assert_eq!(costs.iter().sum::<Cost>(), Cost::from_nanos(12));
    assert_eq!(costs.into_iter().sum::<Cost>(), Cost::from_nanos(12));
    assert_eq!([Cost::MAX, Cost::MAX].into_iter().sum::<Cost>(), Cost::MAX);
    assert!(Cost::from_nanos(1) < Cost::from_nanos(2));

    let huge = Usage {
        input_tokens: u64::MAX,
        output_tokens: u64::MAX,
        cached_input_tokens: u64::MAX,
        cache_write_tokens: u64::MAX,
        reasoning_tokens: u64::MAX,
    };
    assert_eq!(cost("o1", huge), Cost::MAX);
}

/// A usage from its disjoint parts, consistent by construction.
fn usage(uncached: u64, cached: u64, write: u64, output: u64) -> Usage {
    Usage {
        input_tokens: uncached + cached + write,
        output_tokens: output,
        cached_input_tokens: cached,
        cache_write_tokens: write,
        reasoning_tokens: output / 2,
    }
}

proptest! {
    #[test]
    fn cost_is_monotonic_in_each_token_count(
        model in prop::sample::select(
            PriceTable::embedded().iter().map(|(m, _)| m.to_owned()).collect::<Vec<_>>()
        ),
        parts in prop::array::uniform4(0u64..1 << 40),
        which in 0usize..4,
        extra in 0u64..1 << 40,
    ) {
        let [uncached, cached, write, output] = parts;
        let before = cost(&model, usage(uncached, cached, write, output));
        let mut more = parts;
        more[which] += extra;
        let [uncached, cached, write, output] = more;
        let after = cost(&model, usage(uncached, cached, write, output));
        prop_assert!(after >= before, "{model}: {before} then {after}");
    }

    #[test]
    fn cost_never_panics(
        input in any::<u64>(),
        output in any::<u64>(),
        cached in any::<u64>(),
        write in any::<u64>(),
        price in prop::array::uniform4(0.0f64..=1_000_000.0),
    ) {
        let [i, o, c, w] = price;
        let p = ModelPrice::new(i, o).unwrap()
            .with_cached_input(c).unwrap()
            .with_cache_write(w).unwrap();
        let u = Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            cache_write_tokens: write,
            reasoning_tokens: 0,
        };
        let table = PriceTable::empty().with_price("m", p);
        prop_assert_eq!(table.cost("m", &u), Ok(p.cost(&u)));
        // More output never costs less, even at the saturation limit.
        let more = Usage { output_tokens: output.saturating_add(1), ..u };
        prop_assert!(p.cost(&more) >= p.cost(&u));
    }
}
