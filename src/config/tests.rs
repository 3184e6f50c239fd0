//! Reading and checking the configuration file.

use super::connection::{pgpass_lookup, url_param, without_params};
use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.postgres.slot, "walhook");
    assert_eq!(c.delivery.max_consecutive_errors, 9);
    assert_eq!(c.events.context_identifier, "Default");
    assert!(!c.delivery.allow_http);
}

#[test]
fn unknown_key_is_named() {
    let err = Config::parse("[delivery]\nmax_consecutive_error = 3\n").unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("max_consecutive_error"), "{text}");
}

#[test]
fn tables_map_entities() {
    let c = Config::parse(
        "[tables.\"crm.contacts\"]\nentity = \"contact\"\nexclude_columns = [\"password_hash\"]\n",
    )
    .unwrap();
    assert_eq!(c.entity_for("crm", "contacts"), "contact");
    assert_eq!(c.entity_for("crm", "other"), "other");
}

#[test]
fn durations_parse_and_fail_clearly() {
    let c = Config::parse("[delivery]\ntimeout = \"250ms\"\n").unwrap();
    assert_eq!(c.delivery.timeout, Duration::from_millis(250));
    let err = Config::parse("[delivery]\ntimeout = \"soon\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("soon"));
}

/// The documented example behaves like an empty file, and its
/// commented-out HTTPS keys parse once uncommented.
#[test]
fn the_example_config_is_the_defaults() {
    let example = include_str!("../../systemd/walhook.toml");
    assert_eq!(Config::parse(example).unwrap(), Config::default());
    // The commented-out [cluster] block has keys of the same names; its
    // own test uncomments it (config/cluster/tests.rs).
    let before_cluster = example.split("\n# [cluster]\n").next().unwrap();
    let uncommented = before_cluster
        .lines()
        .map(|line| {
            for key in ["ca_file", "client_cert_file", "client_key_file"] {
                if let Some(rest) = line.strip_prefix(&format!("# {key} = ")) {
                    return format!("{key} = {rest}\n");
                }
            }
            format!("{line}\n")
        })
        .collect::<String>();
    let d = Config::parse(&uncommented).unwrap().delivery;
    assert!(d.ca_file.is_some() && d.client_cert_file.is_some() && d.client_key_file.is_some());
}

/// Every key the parser accepts is in the example config, set or in a
/// comment (`# key = ...`, for the keys whose default is unset): the file
/// the README calls the list of every key is one.
#[test]
fn the_example_config_names_every_key() {
    let example = include_str!("../../systemd/walhook.toml");
    let parsed: toml::Table = toml::from_str(example).unwrap();
    let every = toml::Value::try_from(Config::default()).unwrap();
    let mut missing = Vec::new();
    for (section, keys) in every.as_table().unwrap() {
        for key in keys.as_table().unwrap().keys() {
            let set = parsed
                .get(section)
                .and_then(|s| s.get(key.as_str()))
                .is_some();
            if !set {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    let optional = [
        ("postgres", "password_file"),
        ("postgres", "setup_url"),
        ("postgres", "setup_password_file"),
        ("delivery", "ca_file"),
        ("delivery", "client_cert_file"),
        ("delivery", "client_key_file"),
        ("metrics", "listen"),
        ("telemetry", "endpoint"),
    ];
    for (section, key) in optional {
        let commented = example
            .split(&format!("\n[{section}]"))
            .nth(1)
            .is_some_and(|rest| {
                let rest = rest.split("\n[").next().unwrap_or(rest);
                rest.lines().any(|l| l.starts_with(&format!("# {key} = ")))
            });
        if !commented {
            missing.push(format!("{section}.{key} (commented out)"));
        }
    }
    assert!(missing.is_empty(), "systemd/walhook.toml lacks {missing:?}");
}

#[test]
fn client_certificate_needs_both_files() {
    let both = Config::parse(
        "[delivery]\nclient_cert_file = \"/etc/walhook/client.pem\"\n\
         client_key_file = \"/etc/walhook/client.key\"\nca_file = \"/etc/walhook/ca.pem\"\n",
    )
    .unwrap();
    assert_eq!(
        both.delivery.client_key_file.as_deref(),
        Some(Path::new("/etc/walhook/client.key"))
    );
    assert_eq!(
        both.delivery.ca_file.as_deref(),
        Some(Path::new("/etc/walhook/ca.pem"))
    );
    let err =
        Config::parse("[delivery]\nclient_cert_file = \"/etc/walhook/client.pem\"\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("key delivery.client_key_file is missing"),
        "{err:#}"
    );
    let err =
        Config::parse("[delivery]\nclient_key_file = \"/etc/walhook/client.key\"\n").unwrap_err();
    assert!(
        format!("{err:#}").contains("key delivery.client_cert_file is missing"),
        "{err:#}"
    );
}

#[test]
fn http_version_takes_three_words() {
    assert_eq!(
        Config::parse("").unwrap().delivery.http_version,
        HttpVersion::Auto
    );
    for (word, version) in [
        ("auto", HttpVersion::Auto),
        ("http1", HttpVersion::Http1),
        ("http2", HttpVersion::Http2),
    ] {
        let c = Config::parse(&format!("[delivery]\nhttp_version = \"{word}\"\n")).unwrap();
        assert_eq!(c.delivery.http_version, version);
        assert_eq!(version.name(), word);
    }
}

/// A wrong word or a wrong type names the key, the value and the three
/// accepted words, and the line it is on.
#[test]
fn a_wrong_http_version_is_refused_naming_the_key_and_the_choices() {
    for (value, shown) in [
        ("\"h2\"", "\"h2\" is not"),
        ("\"HTTP2\"", "\"HTTP2\" is not"),
        ("\"\"", "\"\" is not"),
        ("2", "invalid type: integer `2`"),
        ("[\"auto\"]", "invalid type: sequence"),
    ] {
        let toml = format!("[delivery]\nhttp_version = {value}\n");
        let err = format!("{:#}", Config::parse(&toml).unwrap_err());
        assert!(err.contains("key delivery.http_version"), "{toml}: {err}");
        assert!(err.contains(shown), "{toml}: {err}");
        assert!(
            err.contains("\"auto\", \"http1\" or \"http2\""),
            "{toml}: {err}"
        );
        assert!(err.contains("line 2"), "{toml}: {err}");
    }
}

/// Entries are checked one by one (see the target policy's tests); a
/// wrong type names the key as well.
#[test]
fn allowed_private_networks_is_a_list_of_networks() {
    assert!(Config::parse("")
        .unwrap()
        .delivery
        .allowed_private_networks
        .is_empty());
    let c =
        Config::parse("[delivery]\nallowed_private_networks = [\"127.0.0.0/8\", \"fd00::/8\"]\n")
            .unwrap();
    let shown: Vec<String> = c
        .delivery
        .allowed_private_networks
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(shown, ["127.0.0.0/8", "fd00::/8"]);
    for (value, shown) in [
        ("\"10.0.0.0/8\"", "invalid type: string \"10.0.0.0/8\""),
        ("[10]", "invalid type: integer `10`"),
    ] {
        let toml = format!("[delivery]\nallowed_private_networks = {value}\n");
        let err = format!("{:#}", Config::parse(&toml).unwrap_err());
        assert!(
            err.contains("key delivery.allowed_private_networks"),
            "{toml}: {err}"
        );
        assert!(err.contains(shown), "{toml}: {err}");
        assert!(err.contains("line 2"), "{toml}: {err}");
    }
}

#[test]
fn bad_slot_name_is_refused() {
    let err = Config::parse("[postgres]\nslot = \"My Slot\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("postgres.slot"));
}

#[test]
fn globs() {
    assert!(glob_match("*.*", "public.contact"));
    assert!(glob_match("crm.*", "crm.contact"));
    assert!(!glob_match("crm.*", "public.contact"));
    assert!(glob_match("public.c*t", "public.contact"));
}

#[test]
fn pgpass_lines() {
    let text =
        "# comment\nother:5432:*:bob:x\ndb.example:*:crm:alice:p\\:w\\\\d\n*:*:*:*:fallback\n";
    assert_eq!(
        pgpass_lookup(text, "db.example", 6543, "crm", "alice").as_deref(),
        Some("p:w\\d")
    );
    assert_eq!(
        pgpass_lookup(text, "h", 1, "d", "u").as_deref(),
        Some("fallback")
    );
    assert_eq!(
        pgpass_lookup("other:5432:*:bob:x\n", "h", 1, "d", "u"),
        None
    );
}

#[test]
fn connection_from_url() {
    let c = Config::parse(
        "[postgres]\nurl = \"postgres://alice:pw@db.example:6543/crm?sslmode=verify-full\"\n",
    )
    .unwrap();
    let conn = c.connection().unwrap();
    assert_eq!(conn.host, "db.example");
    assert_eq!(conn.port, 6543);
    assert_eq!(conn.user, "alice");
    assert_eq!(conn.password.as_deref(), Some("pw"));
    assert_eq!(conn.dbname, "crm");
    assert_eq!(conn.sslmode, SslMode::VerifyFull);
    assert!(!format!("{conn:?}").contains("pw"));
}

#[test]
fn setup_url_is_its_own_connection_and_url_is_the_fallback() {
    let c = Config::parse("[postgres]\nurl = \"postgres://run:pw1@db.example/crm\"\n").unwrap();
    assert!(!c.has_setup_url());
    let setup = c.setup_connection().unwrap();
    assert_eq!(
        (setup.user.as_str(), setup.password.as_deref()),
        ("run", Some("pw1"))
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("setup-password");
    std::fs::write(&file, "pw2\n").unwrap();
    let c = Config::parse(&format!(
        "[postgres]\nurl = \"postgres://run:pw1@db.example/crm\"\n\
         setup_url = \"host=db.example user=owner dbname=crm sslmode=require\"\n\
         setup_password_file = {:?}\n",
        file.display().to_string()
    ))
    .unwrap();
    assert!(c.has_setup_url());
    let run = c.connection().unwrap();
    assert_eq!(
        (run.user.as_str(), run.password.as_deref()),
        ("run", Some("pw1"))
    );
    let setup = c.setup_connection().unwrap();
    assert_eq!(setup.user, "owner");
    assert_eq!(setup.password.as_deref(), Some("pw2"));
    assert_eq!(setup.dbname, "crm");
    assert_eq!(setup.sslmode, SslMode::Require);

    // A broken setup_url is named as such, and does not break `url`.
    let c = Config::parse(
        "[postgres]\nurl = \"postgres://run@db.example/crm\"\nsetup_url = \"postgres://x/y?sslmode=bogus\"\n",
    )
    .unwrap();
    assert!(c.connection().is_ok());
    let e = format!("{:#}", c.setup_connection().unwrap_err());
    assert!(e.contains("postgres.setup_url"), "{e}");
    let c = Config::parse(
        "[postgres]\nurl = \"postgres://run@db.example/crm\"\nsetup_url = \"postgres://o@db.example/crm\"\n\
         setup_password_file = \"/nonexistent/pw\"\n",
    )
    .unwrap();
    let e = format!("{:#}", c.setup_connection().unwrap_err());
    assert!(e.contains("postgres.setup_password_file"), "{e}");
}

fn connection(url: &str) -> Connection {
    Config::parse(&format!("[postgres]\nurl = {url:?}\n"))
        .unwrap()
        .connection()
        .unwrap()
}

/// A user name and password percent-encoded in the URL, with the
/// characters that would otherwise end them.
#[test]
fn percent_encoded_credentials() {
    let conn = connection("postgres://al%40ice:p%40ss%3Aw%2Frd%3Fx+y%25@db.example/crm");
    assert_eq!(conn.user, "al@ice");
    assert_eq!(conn.password.as_deref(), Some("p@ss:w/rd?x+y%"));
    assert_eq!(conn.host, "db.example");
    assert_eq!(conn.dbname, "crm");
}

#[test]
fn several_url_params() {
    let url = "postgres://alice@db.example/crm?application_name=x&sslmode=verify-ca\
               &sslrootcert=%2Fetc%2Fwalhook%2Fca%20bundle+1.pem&connect_timeout=5";
    assert_eq!(url_param(url, "sslmode").as_deref(), Some("verify-ca"));
    assert_eq!(
        url_param(url, "sslrootcert").as_deref(),
        Some("/etc/walhook/ca bundle+1.pem")
    );
    assert_eq!(url_param(url, "application_name").as_deref(), Some("x"));
    assert_eq!(url_param(url, "host"), None);
    assert_eq!(
        without_params(url, &["sslmode", "sslrootcert"]),
        "postgres://alice@db.example/crm?application_name=x&connect_timeout=5"
    );
    let conn = connection(url);
    assert_eq!(conn.sslmode, SslMode::VerifyCa);
    assert_eq!(
        conn.sslrootcert.as_deref(),
        Some(Path::new("/etc/walhook/ca bundle+1.pem"))
    );

    // Names are percent-decoded too, as tokio-postgres decodes them.
    let url = "postgres://u@h/d?ssl%6Dode=disable";
    assert_eq!(url_param(url, "sslmode").as_deref(), Some("disable"));
    assert_eq!(without_params(url, &["sslmode"]), "postgres://u@h/d");

    let url = "postgres://u@h/d";
    assert_eq!(url_param(url, "sslmode"), None);
    assert_eq!(without_params(url, &["sslmode"]), url);
}

#[test]
fn key_value_params() {
    let conn = "host=db.example user=u sslmode=verify-full sslrootcert=/etc/ca%20x.pem dbname=crm";
    assert_eq!(url_param(conn, "sslmode").as_deref(), Some("verify-full"));
    // No percent-decoding outside a URL, as in libpq.
    assert_eq!(
        url_param(conn, "sslrootcert").as_deref(),
        Some("/etc/ca%20x.pem")
    );
    assert_eq!(
        without_params(conn, &["sslmode", "sslrootcert"]),
        "host=db.example user=u dbname=crm"
    );
}

mod validation_tests {
    use super::*;

    fn refused(toml: &str) -> String {
        match Config::parse(toml) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn every_value_that_would_break_later_is_refused_naming_its_key() {
        for (toml, key) in [
            ("[delivery]\nconcurrency_per_webhook = 10000000", "delivery.concurrency_per_webhook"),
            ("[delivery]\nconcurrency_per_webhook = 0", "delivery.concurrency_per_webhook"),
            ("[delivery]\nconcurrency_per_webhook = -3", "delivery.concurrency_per_webhook"),
            ("[delivery]\nconcurrency_per_webhook = \"fast\"", "delivery.concurrency_per_webhook"),
            ("[delivery]\nconcurrency_per_webhook = 1.5", "delivery.concurrency_per_webhook"),
            ("[delivery]\nmax_concurrency_per_webhook = 0", "delivery.max_concurrency_per_webhook"),
            (
                "[delivery]\nmax_concurrency_per_webhook = 5000",
                "delivery.max_concurrency_per_webhook",
            ),
            ("[delivery]\ntimeout = \"0s\"", "delivery.timeout"),
            ("[delivery]\nconnect_timeout = \"0s\"", "delivery.connect_timeout"),
            ("[delivery]\nmax_in_flight_bytes = 5000000000", "delivery.max_in_flight_bytes"),
            ("[delivery]\nmax_body_bytes = 2000000000", "delivery.max_body_bytes"),
            ("[delivery]\nmax_consecutive_errors = 0", "delivery.max_consecutive_errors"),
            ("[delivery]\nparked_retention = \"1s\"", "delivery.parked_retention"),
            (
                "[delivery]\nmax_parked_events_per_webhook = 0",
                "delivery.max_parked_events_per_webhook",
            ),
            (
                "[delivery]\nmax_parked_bytes_per_webhook = 1000",
                "delivery.max_parked_bytes_per_webhook",
            ),
            (
                "[delivery]\nmax_parked_bytes_per_webhook = 100000000000000000",
                "delivery.max_parked_bytes_per_webhook",
            ),
            // Room for one event of the largest size at least.
            (
                "[delivery]\nmax_body_bytes = 1048576\nmax_parked_bytes_per_webhook = 1000000",
                "delivery.max_parked_bytes_per_webhook",
            ),
            ("[postgres]\nstatus_interval = \"0s\"", "postgres.status_interval"),
            ("[log]\nlevel = \"(((\"", "log.level"),
            ("[log]\nlevel = \"info,walhook=loud\"", "log.level"),
            (
                "[postgres]\npublication = \"p23456789012345678901234567890123456789012345678901234567\"",
                "postgres.publication",
            ),
        ] {
            let error = refused(toml);
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn values_at_the_edges_of_their_ranges_are_accepted() {
        let config = Config::parse(
            "[postgres]\npublication = \"p234567890123456789012345678901234567890123456789012345\"\n\
             [delivery]\nconcurrency_per_webhook = 4096\nmax_in_flight_bytes = 4294967295\n\
             parked_retention = \"0s\"\ntimeout = \"100ms\"\n[log]\nlevel = \"warn,walhook=debug\"",
        )
        .unwrap();
        assert_eq!(config.keyless_publication().len(), 63);
    }
}

/// A password file every user can read is named, with the fix; one only
/// its owner can read is fine.
#[cfg(unix)]
#[test]
fn a_password_file_readable_by_every_user_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "secret\n").unwrap();
    let config = Config::parse(&format!(
        "[postgres]\nurl = \"postgres://w@db/app\"\npassword_file = {:?}\n",
        file.display().to_string()
    ))
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o604)).unwrap();
    let problems = config.password_file_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("key postgres.password_file: ")
            && problems[0].contains("readable by every user (mode 0604): chmod 600"),
        "{problems:?}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(config.password_file_problems().is_empty());
}

/// Without a URL, the connection is walhook@127.0.0.1:5432/postgres (the
/// PG* variables, when set, come first: `errors::the_pg_variables_apply_without_a_url`).
#[test]
fn no_url_means_walhook_on_the_local_server() {
    if ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        eprintln!("no_url_means_walhook_on_the_local_server NOT CHECKED: PG* variables are set");
        return;
    }
    let conn = Config::parse("").unwrap().connection().unwrap();
    assert_eq!(format!("{conn:?}"), "walhook@127.0.0.1:5432/postgres");
}
