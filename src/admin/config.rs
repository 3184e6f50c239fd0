//! `walhook config show` and `walhook config check`: the config file on its
//! own, without a database (a DBA's config repository checks it in CI).

use std::path::Path;

use super::setup::print_line;
use crate::cli::{exit, ConfigCommand};
use crate::config::{show, Config, Purpose};
use crate::setup::{CheckLevel, CheckLine};

/// Runs a `config` command on `path` (`None`: no file, the defaults).
pub fn config(path: Option<&Path>, command: &ConfigCommand) -> u8 {
    match command {
        ConfigCommand::Show => match read(path) {
            Ok((config, text)) => {
                let file = path.zip(text.as_deref());
                match show::render(&config, file) {
                    Ok(shown) => {
                        print!("{shown}");
                        exit::OK
                    }
                    Err(e) => {
                        eprintln!("walhook: {e:#}");
                        exit::FAILURE
                    }
                }
            }
            Err(code) => code,
        },
        ConfigCommand::Check { file } => check(file.as_deref().or(path)),
    }
}

/// The parsed file and its text; an unreadable or invalid one is reported
/// here, with exit code 2.
fn read(path: Option<&Path>) -> Result<(Config, Option<String>), u8> {
    let Some(path) = path else {
        return Ok((Config::default(), None));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("walhook: cannot read config file {}: {e}", path.display());
        exit::CONFIG
    })?;
    match Config::parse(&text) {
        Ok(config) => Ok((config, Some(text))),
        Err(e) => {
            eprintln!("walhook: config file {}: {e:#}", path.display());
            Err(exit::CONFIG)
        }
    }
}

/// What can be known of a config without the database.
fn check(path: Option<&Path>) -> u8 {
    let Some(path) = path else {
        eprintln!(
            "walhook: config check: no file named and {} does not exist",
            crate::cli::DEFAULT_CONFIG
        );
        return exit::CONFIG;
    };
    let (config, text) = match read(Some(path)) {
        Ok(read) => read,
        Err(code) => return code,
    };
    let set = text
        .as_deref()
        .and_then(|t| toml::from_str::<toml::Table>(t).ok())
        .map_or(0, |t| {
            t.values()
                .map(|v| v.as_table().map_or(1, |section| section.len()))
                .sum::<usize>()
        });
    let mut lines = vec![CheckLine {
        level: CheckLevel::Ok,
        text: format!(
            "config file {} is valid: {set} key(s) set, every other key has its default",
            path.display()
        ),
    }];
    let mut purposes = vec![(Purpose::Run, "postgres.url")];
    if config.has_setup_url() {
        purposes.push((Purpose::Setup, "postgres.setup_url"));
    }
    for (purpose, key) in purposes {
        let resolved = match purpose {
            Purpose::Run => config.connection(),
            Purpose::Setup => config.setup_connection(),
        };
        lines.push(match resolved {
            Ok(c) => CheckLine {
                level: CheckLevel::Ok,
                text: format!(
                    "{key} resolves to {}@{}:{}/{} (with the PG* variables of this environment)",
                    c.user, c.host, c.port, c.dbname
                ),
            },
            Err(e) => CheckLine {
                level: CheckLevel::Fail,
                text: format!("{e:#}"),
            },
        });
    }
    for problem in config.password_file_problems() {
        lines.push(CheckLine {
            level: CheckLevel::Fail,
            text: problem,
        });
    }
    lines.extend(crate::setup::check_delivery_files(&config));
    let mut failed = false;
    for line in &lines {
        failed |= print_line(line);
    }
    if failed {
        exit::CHECK_FAILED
    } else {
        exit::OK
    }
}
