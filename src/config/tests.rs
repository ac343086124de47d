use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_toml_and_env("", env(&[])).unwrap();
    assert_eq!(c.kafka.input_topic, "attnwatch-input");
    assert_eq!(c.model.provider, Provider::Cpu);
    assert_eq!(c.model.max_delay, Duration::from_millis(5));
    assert_eq!(c.publish.attention, AttentionDetail::TopK);
}

#[test]
fn env_overrides_file() {
    let c = Config::from_toml_and_env(
        "[kafka]\nbrokers = \"a:1\"\n[model]\nmax_batch = 8\n",
        env(&[
            ("ATTNWATCH__KAFKA__BROKERS", "b:2"),
            ("ATTNWATCH__MODEL__MAX_BATCH", "32"),
            ("ATTNWATCH__MODEL__MAX_DELAY", "20ms"),
            ("ATTNWATCH__PUBLISH__ATTENTION", "row"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "b:2");
    assert_eq!(c.model.max_batch, 32);
    assert_eq!(c.model.max_delay, Duration::from_millis(20));
    assert_eq!(c.publish.attention, AttentionDetail::Row);
}

#[test]
fn kafka_options_take_numbers_and_booleans_as_text() {
    let c = Config::from_toml_and_env(
        "[kafka.options]\n\"linger.ms\" = 1\n\"enable.ssl.certificate.verification\" = false\n",
        env(&[("ATTNWATCH__KAFKA__OPTIONS__FETCH.MAX.BYTES", "1048576")]),
    )
    .unwrap();
    assert_eq!(c.kafka.options["linger.ms"], "1");
    assert_eq!(
        c.kafka.options["enable.ssl.certificate.verification"],
        "false"
    );
    assert_eq!(c.kafka.options["fetch.max.bytes"], "1048576");
}

#[test]
fn secret_options_name_a_file_or_a_variable_and_secrets_stay_out_of_options() {
    let c = Config::from_toml_and_env(
            "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"ssl.ca.location\" = \"/ca.pem\"\n\
             [kafka.secret_options]\n\"sasl.password\" = { file = \"/run/secrets/pw\" }\n",
            env(&[(
                "ATTNWATCH__KAFKA__SECRET_OPTIONS__SSL.KEY.PASSWORD__ENV",
                "KEY_PW",
            )]),
        )
        .unwrap();
    assert_eq!(c.kafka.options["ssl.ca.location"], "/ca.pem");
    assert_eq!(
        c.kafka.secret_options["sasl.password"],
        SecretSource::File("/run/secrets/pw".into())
    );
    assert_eq!(
        c.kafka.secret_options["ssl.key.password"],
        SecretSource::Env("KEY_PW".into())
    );
    // The printed config (check-config) names the sources only.
    let printed = toml::to_string_pretty(&c).unwrap();
    assert!(
        printed.contains("/run/secrets/pw") && printed.contains("KEY_PW"),
        "{printed}"
    );

    // A secret written into the config (or into an override of
    // kafka.options) is refused, pointing at secret_options.
    for (text, vars) in [
        ("[kafka.options]\n\"sasl.password\" = \"hunter2\"\n", vec![]),
        (
            "",
            vec![("ATTNWATCH__KAFKA__OPTIONS__SASL.PASSWORD", "hunter2")],
        ),
    ] {
        let e = Config::from_toml_and_env(text, env(&vars))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.options.\"sasl.password\" is a secret")
                && e.contains("[kafka.secret_options]")
                && !e.contains("hunter2"),
            "{e}"
        );
    }
    for (text, want) in [
        // Both a file and a variable, an unknown source, a bare string.
        (
            "\"sasl.password\" = { file = \"/a\", env = \"B\" }",
            "exactly one of",
        ),
        (
            "\"sasl.password\" = { path = \"/a\" }",
            "unknown field `path`",
        ),
        ("\"sasl.password\" = \"hunter2\"", "found a string"),
        ("\"sasl.password\" = { env = \"\" }", "not a usable"),
    ] {
        let e = Config::from_toml_and_env(&format!("[kafka.secret_options]\n{text}\n"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want) && e.contains("sasl.password") && !e.contains("hunter2"),
            "{text}: {e}"
        );
    }
    let e = Config::from_toml_and_env(
            "[kafka.options]\n\"sasl.username\" = \"a\"\n[kafka.secret_options]\n\"sasl.username\" = { env = \"U\" }\n",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("set it in one place"), "{e}");
}

#[test]
fn delivery_and_idle_timers() {
    let c = Config::from_toml_and_env("", env(&[])).unwrap();
    assert_eq!(c.kafka.delivery, Delivery::AtLeastOnce);
    let t = c.window.timers();
    assert_eq!(t.flush_after_ms, Some(120_000));
    assert_eq!(t.stale_after_ms, Some(600_000));
    let c = Config::from_toml_and_env(
            "[kafka]\ndelivery = \"exactly_once\"\ncommit_interval = \"1s\"\n[window]\nflush_after = \"0s\"\n",
            env(&[]),
        )
        .unwrap();
    assert_eq!(c.kafka.delivery, Delivery::ExactlyOnce);
    assert_eq!(c.window.timers().flush_after_ms, None);
    // A commit interval as long as the transaction timeout could never commit in time.
    let e = Config::from_toml_and_env(
        "[kafka]\ndelivery = \"exactly_once\"\ncommit_interval = \"30s\"\n",
        env(&[]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("transaction_timeout"), "{e}");
    let e = Config::from_toml_and_env("[kafka]\ndelivery = \"twice\"\n", env(&[])).unwrap_err();
    assert!(e.to_string().contains("delivery"), "{e}");
}

#[test]
fn unknown_fields_are_rejected() {
    let e = Config::from_toml_and_env("[kafka]\nbrokerz = \"a\"\n", env(&[])).unwrap_err();
    assert!(e.to_string().contains("brokerz"), "{e}");
    let e = Config::from_toml_and_env("", env(&[("ATTNWATCH__MODEL__NOPE", "1")])).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn cross_field_validation() {
    let e = Config::from_toml_and_env(
        "[kafka]\ninput_topic = \"x\"\noutput_topic = \"x\"\n[model]\nmax_batch = 0\n",
        env(&[]),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("loop") && msg.contains("max_batch"), "{msg}");
}

#[test]
fn input_limits_have_sane_defaults_and_are_validated() {
    let c = Config::from_toml_and_env("", env(&[])).unwrap();
    let l = c.ingest.limits();
    assert_eq!(l, crate::ingest::decode::Limits::DEFAULT);
    assert_eq!(
        (
            l.max_message_bytes,
            l.max_series_bytes,
            l.max_labels,
            l.max_label_bytes
        ),
        (1_048_576, 256, 32, 256)
    );
    let c = Config::from_toml_and_env(
        "[ingest]\nmax_series_bytes = 64\nmax_labels = 0\n",
        env(&[("ATTNWATCH__INGEST__MAX_MESSAGE_BYTES", "4096")]),
    )
    .unwrap();
    assert_eq!(c.ingest.max_series_bytes, 64);
    assert_eq!(c.ingest.max_labels, 0);
    assert_eq!(c.ingest.max_message_bytes, 4096);
    let e = Config::from_toml_and_env(
        "[ingest]\nmax_message_bytes = 0\nmax_series_bytes = 0\nmax_label_bytes = 0\n",
        env(&[]),
    )
    .unwrap_err()
    .to_string();
    for key in ["max_message_bytes", "max_series_bytes", "max_label_bytes"] {
        assert!(e.contains(key), "{e}");
    }
    let e = Config::from_toml_and_env("[ingest]\nmax_lables = 3\n", env(&[])).unwrap_err();
    assert!(e.to_string().contains("max_lables"), "{e}");
}

#[test]
fn the_token_is_named_never_written_and_its_settings_are_validated() {
    let c = Config::from_toml_and_env("", env(&[])).unwrap();
    assert_eq!(c.server.token_source(), None);
    assert!(!c.server.protect_metrics && !c.server.protect_health);
    let c = Config::from_toml_and_env(
        "[server]\ntoken_file = \"/run/secrets/attnwatch-token\"\nprotect_metrics = true\n",
        env(&[]),
    )
    .unwrap();
    assert_eq!(
        c.server.token_source(),
        Some(TokenSource::File("/run/secrets/attnwatch-token".into()))
    );
    let c = Config::from_toml_and_env(
        "",
        env(&[
            ("ATTNWATCH__SERVER__TOKEN_ENV", "\"ATTNWATCH_API_TOKEN\""),
            ("ATTNWATCH__SERVER__PROTECT_HEALTH", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.server.token_source(),
        Some(TokenSource::Env("ATTNWATCH_API_TOKEN".into()))
    );
    assert!(c.server.protect_health);
    // The token itself has no key.
    let e = Config::from_toml_and_env("[server]\ntoken = \"s3cret\"\n", env(&[])).unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    for (toml, want) in [
        (
            "token_file = \"/a\"\ntoken_env = \"B\"",
            "at most one of server.token_file and server.token_env",
        ),
        ("token_file = \"\"", "server.token_file must not be empty"),
        ("token_env = \"\"", "server.token_env must be"),
        ("token_env = \"A=B\"", "server.token_env must be"),
        (
            "token_env = \"ATTNWATCH__X\"",
            "must not start with ATTNWATCH__",
        ),
        (
            "protect_metrics = true",
            "server.protect_metrics needs a token",
        ),
        (
            "protect_health = true",
            "server.protect_health needs a token",
        ),
    ] {
        let e = Config::from_toml_and_env(&format!("[server]\n{toml}\n"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{toml}: {e}");
    }
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config/attnwatch.example.toml");
    Config::from_toml_and_env(text, env(&[])).unwrap();
}
