//! The man pages and shell completions the Debian package ships, generated
//! from the clap definition in [`crate::cli`] so they can never describe
//! options the binary does not have.
//!
//! `walhook package-files DIR` (hidden) writes them; `pkg/build-deb.sh`
//! runs it on the freshly built binary before `cargo deb` packs `DIR`.
//! Generating them at run time rather than in a build script keeps the
//! CLI definition where it is (a build script cannot import the crate it
//! builds) and the normal build free of files nobody asked for.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use crate::cli::{exit, Cli, DEFAULT_CONFIG};

/// Where the package installs each kind of file, relative to `DIR`: the
/// same layout as under `/usr/share`, so the package's asset list maps
/// each subdirectory to its system path.
pub const MAN_DIR: &str = "man/man1";
pub const BASH_DIR: &str = "bash-completion/completions";
pub const ZSH_DIR: &str = "zsh/vendor-completions";
pub const FISH_DIR: &str = "fish/vendor_completions.d";

/// What went wrong writing one of the files, naming it.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `walhook.1`, one page per visible subcommand (`walhook-setup.1`,
/// `walhook-webhook-add.1`, ...) and the bash, zsh and fish completions
/// under `dir`, creating the directories; returns every file written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    // build() fills in what rendering reads: the subcommands' display
    // names (walhook-setup), the generated --help and --version flags.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();

    let man_dir = create_dir(&dir.join(MAN_DIR))?;
    let top = man_dir.join("walhook.1");
    write_file(&top, &top_page(&cmd).map_err(|e| io_error(&top, e))?)?;
    written.push(top);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, &man_dir, &mut written)?;
    }

    for (shell, sub_dir) in [
        (Shell::Bash, BASH_DIR),
        (Shell::Zsh, ZSH_DIR),
        (Shell::Fish, FISH_DIR),
    ] {
        let shell_dir = create_dir(&dir.join(sub_dir))?;
        // The names each shell's loader looks for: the command's own name
        // for bash, `_walhook` for zsh, `walhook.fish` for fish.
        let name = match shell {
            Shell::Bash => "walhook".to_string(),
            Shell::Zsh => "_walhook".to_string(),
            _ => "walhook.fish".to_string(),
        };
        let path = shell_dir.join(name);
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "walhook", &mut script);
        write_file(&path, &script)?;
        written.push(path);
    }
    Ok(written)
}

/// The page of one subcommand and, recursively, of its own subcommands.
fn subcommand_pages(
    cmd: &clap::Command,
    man_dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), WriteError> {
    let man = Man::new(cmd.clone()).manual("walhook manual");
    let path = man_dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).map_err(|e| io_error(&path, e))?;
    write_file(&path, &page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, man_dir, written)?;
    }
    Ok(())
}

/// `walhook(1)`: clap's sections, then what a DBA looks for in a daemon's
/// page and clap does not know: the files, exit status, environment and
/// the related pages.
fn top_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone()).manual("walhook manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;

    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    roff.control("TP", [])
        .text([bold(DEFAULT_CONFIG)])
        .text([roman(
            "The configuration, read when -c is not given. Every key is listed \
         there with its default; an unknown key is an error. Readable by the \
         walhook group only (0640 root:walhook), as it may hold a password.",
        )]);
    roff.control("TP", [])
        .text([bold("/etc/walhook/password")])
        .text([roman(
            "The usual place of postgres.password_file: the password on its first line.",
        )]);
    roff.control("TP", [])
        .text([bold("/usr/lib/systemd/system/walhook.service")])
        .text([roman(
            "The unit: walhook run as the walhook user, Type=notify, reload with SIGHUP.",
        )]);
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        (exit::OK, "Success."),
        (
            exit::FAILURE,
            "A runtime failure: database, stream, a failed webhook test, a refused teardown.",
        ),
        (
            exit::CONFIG,
            "The config file or the command line is invalid (systemd does not restart on it).",
        ),
        (exit::CHECK_FAILED, "check found a problem."),
        (exit::SLOT_LOST, "status found the slot missing or lost."),
    ] {
        roff.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", [])
        .text([bold(
            "PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE, PGSSLROOTCERT",
        )])
        .text([roman(
            "Fill in what postgres.url leaves out, as in libpq; PGPASSWORD is used \
             when neither the URL nor a password file gives a password.",
        )]);
    roff.control("TP", [])
        .text([bold("RUST_LOG")])
        .text([roman("A log filter that wins over log.level.")]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), journalctl(1); the README at \
         /usr/share/doc/walhook/README.md for roles, the webhook table, the \
         request format and operations.",
    )]);
    roff.to_writer(&mut page)?;

    man.render_version_section(&mut page)?;
    Ok(page)
}

fn create_dir(path: &Path) -> Result<PathBuf, WriteError> {
    fs::create_dir_all(path).map_err(|e| io_error(path, e))?;
    Ok(path.to_path_buf())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let mut file = fs::File::create(path).map_err(|e| io_error(path, e))?;
    file.write_all(bytes).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn writes_a_page_per_visible_command_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        for expected in [
            "man/man1/walhook.1",
            "man/man1/walhook-run.1",
            "man/man1/walhook-setup.1",
            "man/man1/walhook-teardown.1",
            "man/man1/walhook-webhook.1",
            "man/man1/walhook-webhook-add.1",
            "bash-completion/completions/walhook",
            "zsh/vendor-completions/_walhook",
            "fish/vendor_completions.d/walhook.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        // The generator itself is no part of the documented interface.
        assert!(
            !names.iter().any(|n| n.contains("package-files")),
            "{names:?}"
        );
    }

    #[test]
    fn the_main_page_has_the_daemon_sections_and_the_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path()).unwrap();
        let page = read(&dir.path().join(MAN_DIR).join("walhook.1"));
        assert!(page.contains("\n.TH walhook 1 "), "{page}");
        for section in [
            "SYNOPSIS",
            "SUBCOMMANDS",
            "FILES",
            "EXIT STATUS",
            "SEE ALSO",
        ] {
            // roff quotes a macro argument that holds a space.
            let heading = if section.contains(' ') {
                format!("\n.SH \"{section}\"\n")
            } else {
                format!("\n.SH {section}\n")
            };
            assert!(page.contains(&heading), "{heading} in {page}");
        }
        assert!(page.contains("/etc/walhook/walhook.toml"));
        assert!(page.contains("walhook\\-setup(1)"), "{page}");
        assert!(!page.contains("package\\-files"), "{page}");
        let add = read(&dir.path().join(MAN_DIR).join("walhook-webhook-add.1"));
        assert!(add.contains("\\-\\-secret\\-file"), "{add}");
    }

    #[test]
    fn completions_offer_the_subcommands_and_their_options() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path()).unwrap();
        let bash = read(&dir.path().join(BASH_DIR).join("walhook"));
        assert!(bash.contains("complete -F _walhook"), "{bash}");
        assert!(bash.contains("--drop-schema"), "{bash}");
        let zsh = read(&dir.path().join(ZSH_DIR).join("_walhook"));
        assert!(zsh.starts_with("#compdef walhook"), "{zsh}");
        let fish = read(&dir.path().join(FISH_DIR).join("walhook.fish"));
        assert!(fish.contains("set-state"), "{fish}");
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, "x").unwrap();
        let err = write_all(&file).unwrap_err();
        assert!(err.to_string().contains("plain-file"), "{err}");
    }
}
