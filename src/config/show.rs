//! `walhook config show`: the effective configuration as a TOML file, every
//! key with its value and where the value came from (the file, or the
//! default), secrets as `***`.
//!
//! What a DBA keeps in version control is the file; what the daemon runs
//! with is the file plus the defaults of every key it leaves out, plus the
//! environment for what `postgres.url` leaves out. This shows the second,
//! so a review of the first can see what it changes.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::{Config, Purpose};

/// The keys that may be left unset, and what that means: TOML has no
/// null, so the output names them in a comment instead.
const OPTIONAL_KEYS: &[(&str, &str)] = &[
    (
        "postgres.password_file",
        "the password comes from the URL, PGPASSWORD or ~/.pgpass",
    ),
    (
        "postgres.setup_url",
        "setup, teardown and check use postgres.url",
    ),
    (
        "postgres.setup_password_file",
        "as postgres.password_file, for setup_url",
    ),
    ("delivery.ca_file", "the system's CA store"),
    ("delivery.client_cert_file", "no client certificate"),
    ("delivery.client_key_file", "no client certificate"),
    ("metrics.listen", "no metrics or health listener"),
];

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Default,
}

/// The effective config of `file` (`None`: no file, every default) as
/// TOML, each value commented with its source.
pub fn render(config: &Config, file: Option<(&Path, &str)>) -> anyhow::Result<String> {
    let effective =
        toml::Value::try_from(config).context("writing the effective configuration as TOML")?;
    let set: toml::Value = match file {
        Some((path, text)) => {
            toml::from_str(text).with_context(|| format!("config file {}", path.display()))?
        }
        None => toml::Value::Table(Default::default()),
    };
    let mut out = String::new();
    match file {
        Some((path, _)) => writeln!(
            out,
            "# walhook's effective configuration: {} and the default of every key it\n\
             # leaves out. Secrets are shown as \"***\".",
            path.display()
        )?,
        None => writeln!(
            out,
            "# walhook's effective configuration: no config file, so every key has its\n\
             # default. Secrets are shown as \"***\"."
        )?,
    }
    let toml::Value::Table(sections) = &effective else {
        anyhow::bail!("the effective configuration is not a table");
    };
    for (name, value) in sections {
        let toml::Value::Table(table) = value else {
            continue;
        };
        let path = vec![name.clone()];
        render_table(&mut out, &path, table, set.get(name))?;
        if name == "postgres" {
            connection_notes(&mut out, config)?;
        }
    }
    Ok(out)
}

/// One `[section]` (and its sub-tables, such as `[tables."public.contact"]`).
fn render_table(
    out: &mut String,
    path: &[String],
    table: &toml::map::Map<String, toml::Value>,
    set: Option<&toml::Value>,
) -> anyhow::Result<()> {
    let (leaves, children): (Vec<_>, Vec<_>) = table
        .iter()
        .partition(|(_, v)| !matches!(v, toml::Value::Table(_)));
    writeln!(out, "\n[{}]", header(path))?;
    if leaves.is_empty() && children.is_empty() {
        let source = if set.is_some() {
            "file"
        } else {
            "default: none"
        };
        if !OPTIONAL_KEYS
            .iter()
            .any(|(k, _)| k.starts_with(&format!("{}.", path.join("."))))
        {
            writeln!(out, "# (empty; {source})")?;
        }
    }
    let lines: Vec<(String, String)> = leaves
        .iter()
        .map(|(key, value)| {
            let key_path = format!("{}.{key}", path.join("."));
            let shown = shown_value(&key_path, value);
            let source = match set.and_then(|s| s.get(key.as_str())) {
                Some(_) => Source::File,
                None => Source::Default,
            };
            let empty = matches!(value, toml::Value::String(text) if text.is_empty());
            (
                format!("{} = {shown}", bare_or_quoted(key)),
                note(&key_path, source, empty),
            )
        })
        .collect();
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (line, note) in lines {
        writeln!(out, "{line:width$}  # {note}")?;
    }
    let section = path.join(".");
    for (key_path, unset) in OPTIONAL_KEYS {
        let Some(key) = key_path
            .strip_prefix(section.as_str())
            .and_then(|k| k.strip_prefix('.'))
        else {
            continue;
        };
        if !table.contains_key(key) {
            writeln!(out, "# {key} is not set (default): {unset}")?;
        }
    }
    for (key, value) in children {
        if let toml::Value::Table(child) = value {
            let mut child_path = path.to_vec();
            child_path.push(key.clone());
            render_table(
                out,
                &child_path,
                child,
                set.and_then(|s| s.get(key.as_str())),
            )?;
        }
    }
    Ok(())
}

/// A table header: `postgres`, `tables."public.contact"`.
fn header(path: &[String]) -> String {
    path.iter()
        .map(|p| bare_or_quoted(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// A key as TOML writes it: bare when it may be, else quoted.
fn bare_or_quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

/// The value as TOML, with the password of a connection string hidden.
fn shown_value(key_path: &str, value: &toml::Value) -> String {
    match (key_path, value) {
        ("postgres.url" | "postgres.setup_url", toml::Value::String(text)) => {
            toml::Value::String(redacted_connection_string(text)).to_string()
        }
        _ => value.to_string(),
    }
}

/// What the comment after a value says (`empty`: the value is "").
fn note(key_path: &str, source: Source, empty: bool) -> String {
    let mut note = match source {
        Source::File => "file".to_owned(),
        Source::Default => "default".to_owned(),
    };
    match key_path {
        "log.level" => {
            if let Ok(filter) = std::env::var("RUST_LOG") {
                note.push_str(&format!(
                    "; RUST_LOG={:?} in the environment wins over it",
                    filter
                ));
            }
        }
        "postgres.url" if empty => {
            note.push_str("; empty: the PG* variables, then walhook@127.0.0.1:5432/postgres");
        }
        _ => {}
    }
    note
}

/// The connections as walhook resolves them (URL, PG* variables, password
/// file), as comments: the environment fills in what the URL leaves out.
fn connection_notes(out: &mut String, config: &Config) -> anyhow::Result<()> {
    let set: Vec<&str> = [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSSLMODE",
        "PGSSLROOTCERT",
    ]
    .into_iter()
    .filter(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    .collect();
    writeln!(
        out,
        "# PG* variables set in this environment: {}",
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(", ")
        }
    )?;
    let purposes: &[(Purpose, &str)] = if config.has_setup_url() {
        &[(Purpose::Run, "run"), (Purpose::Setup, "setup")]
    } else {
        &[(Purpose::Run, "run and setup")]
    };
    for (purpose, what) in purposes {
        match super::Connection::from_config(&config.postgres, *purpose) {
            Ok(c) => writeln!(
                out,
                "# {what} connection resolved: {}@{}:{}/{} (sslmode {:?}, {})",
                c.user,
                c.host,
                c.port,
                c.dbname,
                c.sslmode,
                if c.password.is_some() {
                    "a password is set"
                } else {
                    "no password"
                }
            )?,
            Err(e) => writeln!(out, "# {what} connection cannot be resolved: {e:#}")?,
        }
    }
    Ok(())
}

/// A PostgreSQL URL or key=value string with its password as `***`.
pub fn redacted_connection_string(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Ok(mut url) = url::Url::parse(trimmed) else {
            return crate::text::redacted_url_text(trimmed);
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" { "***".into() } else { v };
                    (k.into_owned(), v.into_owned())
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return url.to_string();
    }
    // key=value pairs; a quoted value may hold spaces.
    let mut shown = String::new();
    let mut rest = trimmed;
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            shown.push_str(rest);
            break;
        };
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('\'') {
            Some(quoted) => {
                let end = quoted.find('\'').map_or(quoted.len(), |i| i + 1);
                (
                    &after[..(end + 1).min(after.len())],
                    &quoted[end.min(quoted.len())..],
                )
            }
            None => match after.find(char::is_whitespace) {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            },
        };
        let key_name = key.trim();
        shown.push_str(key);
        shown.push('=');
        shown.push_str(if key_name == "password" { "***" } else { value });
        rest = remaining;
        if let Some(space) = rest.find(|c: char| !c.is_whitespace()) {
            shown.push_str(&rest[..space]);
            rest = &rest[space..];
        } else {
            rest = "";
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_both_spellings() {
        assert_eq!(
            redacted_connection_string("postgres://walhook:s3cret@db:5432/crm?sslmode=require"),
            "postgres://walhook:***@db:5432/crm?sslmode=require"
        );
        assert_eq!(
            redacted_connection_string("postgres://walhook@db/crm?password=s3cret&x=1"),
            "postgres://walhook@db/crm?password=***&x=1"
        );
        assert_eq!(
            redacted_connection_string("host=db password='a b c' user=walhook"),
            "host=db password=*** user=walhook"
        );
        assert_eq!(
            redacted_connection_string("host=db password=s3cret"),
            "host=db password=***"
        );
        assert_eq!(
            redacted_connection_string("postgres://walhook@db/crm"),
            "postgres://walhook@db/crm"
        );
    }

    #[test]
    fn every_key_is_shown_with_its_source_and_the_output_reads_back() {
        let text = "[postgres]\nurl = \"postgres://walhook:pw@db/crm\"\nslot = \"walhook_crm\"\n\
                    [delivery]\ntimeout = \"20s\"\nallowed_private_networks = [\"10.0.0.0/8\"]\n\
                    [tables.\"public.contact\"]\nentity = \"person\"\n";
        let config = Config::parse(text).unwrap();
        let shown = render(&config, Some((Path::new("crm.toml"), text))).unwrap();
        let line = |key: &str| {
            shown
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("{key} in\n{shown}"))
                .to_owned()
        };
        assert!(line("slot").ends_with("# file"), "{shown}");
        assert!(line("schema").ends_with("# default"), "{shown}");
        assert!(line("timeout").contains("\"20s\""), "{shown}");
        assert!(line("connect_timeout").ends_with("# default"), "{shown}");
        assert!(line("url").contains("walhook:***@db"), "{shown}");
        assert!(!shown.contains("pw@"), "{shown}");
        assert!(shown.contains("[tables.\"public.contact\"]"), "{shown}");
        assert!(line("entity").ends_with("# file"), "{shown}");
        // The output is a config file with the same meaning, bar the
        // hidden password.
        let again = Config::parse(&shown.replace("***", "pw")).unwrap();
        assert_eq!(again, config);
        // Every key of every section is there.
        let keys = |v: &toml::Value| -> usize {
            v.as_table()
                .unwrap()
                .values()
                .map(|s| s.as_table().map_or(0, |t| t.len()))
                .sum()
        };
        let effective = toml::Value::try_from(&config).unwrap();
        let reread: toml::Value = toml::from_str(&shown).unwrap();
        assert_eq!(keys(&reread), keys(&effective));
    }

    #[test]
    fn the_optional_keys_are_the_ones_a_default_leaves_out() {
        let text = "[postgres]\npassword_file = \"/p\"\nsetup_url = \"postgres://s@db/crm\"\n\
                    setup_password_file = \"/s\"\n[delivery]\nca_file = \"/ca\"\n\
                    client_cert_file = \"/c\"\nclient_key_file = \"/k\"\n\
                    [metrics]\nlisten = \"127.0.0.1:9187\"\n";
        let full = toml::Value::try_from(Config::parse(text).unwrap()).unwrap();
        let default = toml::Value::try_from(Config::default()).unwrap();
        let mut only_when_set = Vec::new();
        for (section, table) in full.as_table().unwrap() {
            for key in table.as_table().unwrap().keys() {
                if default[section.as_str()].get(key.as_str()).is_none() {
                    only_when_set.push(format!("{section}.{key}"));
                }
            }
        }
        only_when_set.sort();
        let mut listed: Vec<String> = OPTIONAL_KEYS.iter().map(|(k, _)| k.to_string()).collect();
        listed.sort();
        assert_eq!(only_when_set, listed);
    }

    #[test]
    fn without_a_file_every_value_is_a_default() {
        let shown = render(&Config::default(), None).unwrap();
        assert!(shown.contains("no config file"), "{shown}");
        assert!(!shown.contains("# file"), "{shown}");
        assert!(
            shown.contains("# listen is not set (default): no metrics or health listener"),
            "{shown}"
        );
        assert_eq!(Config::parse(&shown).unwrap(), Config::default());
    }
}
