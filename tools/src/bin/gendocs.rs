//! `anon-gendocs OUTDIR`: the man pages and shell completions of `anonserver`
//! and `anonclient`, generated from their clap definitions (`anon::cli`), so
//! they always document the options the programs really take.
//!
//! Writes into OUTDIR, for each PROGRAM:
//!
//! - `PROGRAM.1`: the man page (section 1, roff);
//! - `PROGRAM.bash`, `_PROGRAM`, `PROGRAM.fish`: bash, zsh and fish
//!   completions (install them as `PROGRAM`, `_PROGRAM`, `PROGRAM.fish`).
//!
//! `scripts/package.sh` runs it for the Debian package.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anon::cli::{ClientArgs, ServerArgs};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// A program's command with its installed name (both argument structs live
/// in one crate, whose name clap would otherwise use for both), and its
/// about without the leading "NAME: " the help text starts with, which a man
/// page's NAME line already shows.
fn named(cmd: Command, name: &'static str) -> Command {
    let cmd = cmd.name(name).bin_name(name).display_name(name);
    let prefix = format!("{name}: ");
    let strip = |text: String| text.strip_prefix(&prefix).map(str::to_owned).unwrap_or(text);
    let about = cmd.get_about().map(|a| strip(a.to_string()));
    let long_about = cmd.get_long_about().or_else(|| cmd.get_about()).map(|a| capitalized(&strip(a.to_string())));
    let mut cmd = cmd;
    if let Some(about) = about {
        cmd = cmd.about(about);
    }
    if let Some(long_about) = long_about {
        cmd = cmd.long_about(long_about);
    }
    cmd
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Text escaped for roff: backslashes, hyphens (so they stay ASCII minus
/// signs for searching and copying) and a leading control character.
fn roff_escape(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') { format!("\\&{escaped}") } else { escaped }
}

/// The help's closing text (`after_help`), as man page sections: each
/// paragraph whose first line ends in a colon ("Example:", "Exit status:")
/// becomes a section of that name, its lines kept as they are (no filling,
/// they are aligned by hand).
fn after_help_sections(cmd: &Command) -> String {
    let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) else {
        return String::new();
    };
    let text = text.to_string();
    let mut roff = String::new();
    for paragraph in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        let mut lines = paragraph.lines();
        let first = lines.next().unwrap_or_default();
        let body: Vec<&str> = match first.strip_suffix(':') {
            Some(heading) => {
                roff.push_str(&format!(".SH {}\n", roff_escape(&heading.to_uppercase())));
                lines.collect()
            }
            None => paragraph.lines().collect(),
        };
        roff.push_str(".PP\n.nf\n");
        for line in body {
            roff.push_str(&roff_escape(line.strip_prefix("  ").unwrap_or(line)));
            roff.push('\n');
        }
        roff.push_str(".fi\n");
    }
    roff
}

fn write_docs(out: &Path, mut cmd: Command) -> std::io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();

    // clap_mangen's sections, but the closing text of the help as sections
    // of their own instead of clap_mangen's "EXTRA" paragraph, which would
    // fill (and so jumble) its hand-aligned lines.
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(after_help_sections(&cmd).as_bytes());
    man.render_version_section(&mut page)?;
    let page_path = out.join(format!("{name}.1"));
    std::fs::write(&page_path, page)?;
    written.push(page_path);

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(shell, &mut cmd, &name, out)?);
    }
    Ok(written)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!(
            "usage: anon-gendocs OUTDIR\nwrites the man pages and bash/zsh/fish completions of anonserver and anonclient into OUTDIR"
        );
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    let result = std::fs::create_dir_all(&out).and_then(|()| {
        let mut written = write_docs(&out, named(ServerArgs::command(), "anonserver"))?;
        written.extend(write_docs(&out, named(ClientArgs::command(), "anonclient"))?);
        Ok(written)
    });
    match result {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anon-gendocs: cannot write into {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
