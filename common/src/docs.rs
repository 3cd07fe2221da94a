//! Man pages and shell completions, generated from the clap definitions the
//! binaries parse with, so the packaged docs can never drift from the real
//! command line: `scripts/package` runs each built binary's hidden
//! `--generate-docs DIR` (see `cli::parse`) instead of
//! building anything a second time.
//!
//! Writes, under DIR: `man/NAME.S` and `man/NAME-SUB.S` for each visible
//! subcommand (section S), `bash/NAME`, `zsh/_NAME`, `fish/NAME.fish`.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use clap_complete::Shell;
use clap_mangen::{
    roff::{bold, roman, Roff},
    Man,
};

/// What a program's pages say beyond its clap definition.
pub struct Pages<'a> {
    /// Manual section: "8" for the pin tool (root only), "1" for the reader.
    pub section: &'a str,
    /// Other pages to list under SEE ALSO, e.g. `longconn-reader(1)`.
    pub see_also: &'a [&'a str],
}

/// The hidden option that writes them, `PROGRAM --generate-docs DIR`
/// (not part of the documented interface; see `cli::parse`).
pub const FLAG: &str = "--generate-docs";

/// Writes every man page and completion script of `cmd` under `dir`.
pub fn write(cmd: clap::Command, pages: &Pages, dir: &Path) -> io::Result<()> {
    // Completions offer `help` as the binary accepts it; man pages need no
    // page for it.
    let complete = cmd.clone();
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_owned();
    let man_dir = dir.join("man");
    fs::create_dir_all(&man_dir).map_err(|e| at(&man_dir, e))?;
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let mut all_pages: Vec<String> = vec![format!("{name}({})", pages.section)];
    all_pages.extend(
        subs.iter()
            .map(|s| format!("{name}-{}({})", s.get_name(), pages.section)),
    );
    for page in std::iter::once(cmd.clone()).chain(subs) {
        let man = Man::new(page.clone())
            .section(pages.section)
            .manual("longconn");
        let path = man_dir.join(man.get_filename());
        let own = format!(
            "{}({})",
            page.get_display_name().unwrap_or(page.get_name()),
            pages.section
        );
        let see: Vec<&str> = all_pages
            .iter()
            .map(String::as_str)
            .chain(pages.see_also.iter().copied())
            .filter(|p| *p != own)
            .collect();
        let mut out = Vec::new();
        render(&man, &page, &see, &mut out)?;
        fs::write(&path, out).map_err(|e| at(&path, e))?;
    }
    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(|e| at(&d, e))?;
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut complete.clone(), &name, &mut out);
        let path = d.join(file);
        fs::write(&path, out).map_err(|e| at(&path, e))?;
    }
    Ok(())
}

/// clap_mangen's page with the after-help text (exit status, examples)
/// kept as laid out, and a SEE ALSO section.
fn render(man: &Man, page: &clap::Command, see: &[&str], w: &mut dyn Write) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if page.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if page.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    let mut roff = Roff::default();
    if let Some(after) = page.get_after_long_help().or(page.get_after_help()) {
        roff.control("SH", ["NOTES"]).control("nf", []);
        for line in after.to_string().lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for (i, p) in see.iter().enumerate() {
        let (name, rest) = p.split_once('(').unwrap_or((p, ""));
        let sep = if i + 1 < see.len() { ", " } else { "" };
        refs.push(bold(name));
        refs.push(roman(if rest.is_empty() {
            sep.to_owned()
        } else {
            format!("({rest}{sep}")
        }));
    }
    roff.text(refs);
    roff.to_writer(w)?;
    // clap_mangen panics on a command without a version (subcommands).
    if page.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand_and_a_script_per_shell() {
        let cmd = clap::Command::new("toy")
            .version("1.0")
            .after_help("Exit status:\n  0  done")
            .subcommand(clap::Command::new("run").about("Run it"))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = std::env::temp_dir().join(format!("longconn-docs-test-{}", std::process::id()));
        let pages = Pages {
            section: "8",
            see_also: &["other(1)"],
        };
        write(cmd, &pages, &dir).unwrap();
        let page = fs::read_to_string(dir.join("man/toy.8")).unwrap();
        assert!(page.contains(".TH toy 8"), "{page}");
        assert!(
            page.contains("SEE ALSO") && page.contains("other"),
            "{page}"
        );
        assert!(page.contains("Exit status"), "{page}");
        assert!(dir.join("man/toy-run.8").exists());
        assert!(!dir.join("man/toy-secret.8").exists());
        let bash = fs::read_to_string(dir.join("bash/toy")).unwrap();
        assert!(bash.contains("run"), "{bash}");
        assert!(dir.join("zsh/_toy").exists() && dir.join("fish/toy.fish").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
