//! `--completions`: scripts for bash, zsh and fish generated from the flag definitions, each
//! naming every flag `--help` lists; the bash one is loaded into a real bash and asked to
//! complete.
mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// The long flags `--help` lists.
fn help_flags() -> Vec<String> {
    let (code, help, _) = run_wsd(&["--help"]);
    assert_eq!(code, 0);
    let mut flags: Vec<String> = help
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let name: String = l
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    flags.dedup();
    assert!(flags.len() > 20, "{flags:?}");
    flags
}

fn completions(shell: &str) -> String {
    let (code, out, err) = run_wsd(&[&format!("--completions={shell}")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    out
}

#[test]
fn each_shells_script_names_every_flag_in_help() {
    let flags = help_flags();
    for (shell, spell) in [("bash", "--{}"), ("zsh", "--{}"), ("fish", "-l {}")] {
        let script = completions(shell);
        let missing: Vec<&String> = flags
            .iter()
            .filter(|f| {
                let needle = spell.replace("{}", f);
                !script.match_indices(&needle).any(|(i, _)| {
                    !script[i + needle.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                })
            })
            .collect();
        assert!(missing.is_empty(), "{shell} completions lack {missing:?}");
    }
    assert!(completions("zsh").starts_with("#compdef wsd"));
    assert!(completions("fish").contains("complete -c wsd"));
}

#[test]
fn bash_completes_a_flag_and_its_values() {
    let bash = Path::new("/bin/bash");
    if !bash.exists() {
        println!("skipped: no /bin/bash");
        return;
    }
    let dir = TempDir::new("completions");
    let script = dir.path().join("wsd.bash");
    std::fs::write(&script, completions("bash")).unwrap();
    let complete = |words: &str| -> String {
        let out = Command::new(bash)
            .arg("--norc")
            .arg("-c")
            .arg(format!(
                "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
                 _wsd wsd \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let replies = complete("wsd --trusted");
    assert_eq!(replies.trim(), "--trusted-proxy", "{replies}");
    let replies = complete("wsd --log-format ''");
    let mut formats: Vec<&str> = replies.lines().collect();
    formats.sort();
    assert_eq!(formats, ["json", "text"]);
    let replies = complete("wsd --completions ''");
    let mut shells: Vec<&str> = replies.lines().collect();
    shells.sort();
    assert_eq!(shells, ["bash", "fish", "zsh"]);
}

#[test]
fn an_unknown_shell_is_a_flag_error() {
    assert_usage_error(&["--completions=tcsh"], &["--completions"]);
}
