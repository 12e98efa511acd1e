//! Dockerfile syntax: lines, continuations, comments, parser directives,
//! heredocs, the exec (JSON) and shell forms, and `$VAR` substitution.
//!
//! Written for Kiln rather than taken from a crate: every problem has to
//! name its file and line, all of them at once, and the grammar Kiln runs
//! is small (the instructions of [`Op`]); the published parsers either
//! stop at the first error or lose the line numbers of continued lines.

use std::collections::BTreeMap;

/// One instruction, at the line where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub op: Op,
    /// The instruction as written (continuations joined), for the build
    /// cache's key and for progress lines.
    pub text: String,
}

/// A command for RUN, CMD and ENTRYPOINT: the exec form's words, or the
/// shell form's string (run by the stage's shell).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `FROM [--platform=P] IMAGE [AS NAME]` (IMAGE unexpanded: ARGs
    /// declared before the first FROM apply).
    From {
        image: String,
        name: Option<String>,
    },
    /// `RUN [--mount=type=cache,...]... CMD`: the command and its cache
    /// mounts.
    Run(Command, Vec<CacheMount>),
    /// `COPY`/`ADD [--from=STAGE] [--chown=..] [--chmod=..] SRC... DEST`.
    Copy {
        add: bool,
        from: Option<String>,
        chmod: Option<u32>,
        sources: Vec<String>,
        dest: String,
    },
    Env(Vec<(String, String)>),
    Arg(String, Option<String>),
    Workdir(String),
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    /// Instructions that describe a container's run time (USER, EXPOSE,
    /// LABEL, VOLUME, ...): read, with nothing to do for a unikernel's
    /// root file system.
    Noted(String),
}

/// A BuildKit cache mount (`--mount=type=cache,target=DIR[,id=ID]`): a
/// folder kept between builds, mounted at DIR for the one RUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMount {
    /// The cache's name (its `id`, else its target).
    pub id: String,
    pub target: String,
}

/// A syntax problem: line and message.
pub type Problem = (usize, String);

/// Splits `text` into instructions; every problem found, with its line.
pub fn parse(text: &str) -> Result<Vec<Instruction>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: `# key=value` lines at the very top.
    while i < lines.len() {
        let l = lines[i].trim();
        let Some(d) = l.strip_prefix('#') else { break };
        let Some((k, v)) = d.split_once('=') else {
            break;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k.contains(' ') {
            break;
        }
        if k == "escape" {
            match v {
                "\\" => escape = '\\',
                "`" => escape = '`',
                _ => problems.push((
                    i + 1,
                    format!("escape={v}: the escape character is \\ or `"),
                )),
            }
        }
        i += 1;
    }
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        // Continuation lines: a line ending in the escape character goes on;
        // comment and empty lines inside are dropped.
        let mut joined = String::new();
        let mut cur = first.trim_end().to_string();
        while cur.ends_with(escape) {
            cur.pop();
            joined.push_str(&cur);
            cur.clear();
            while i < lines.len() {
                let l = lines[i].trim_start();
                i += 1;
                if l.starts_with('#') || l.trim().is_empty() {
                    continue;
                }
                cur = l.trim_end().to_string();
                break;
            }
        }
        joined.push_str(&cur);
        let (word, rest) = match joined.split_once(char::is_whitespace) {
            Some((w, r)) => (w.to_string(), r.trim().to_string()),
            None => (joined.clone(), String::new()),
        };
        let upper = word.to_ascii_uppercase();
        // Heredocs (`RUN <<EOF` ... `EOF`): the lines up to the
        // delimiter are the script.
        let mut heredoc = None;
        if let Some(h) = rest.strip_prefix("<<") {
            let h = h.strip_prefix('-').unwrap_or(h);
            let delim: String = h
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches(['"', '\''])
                .to_string();
            if !delim.is_empty() {
                let mut body = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    if l.trim() == delim {
                        closed = true;
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                if !closed {
                    problems.push((
                        start + 1,
                        format!("{upper}: heredoc <<{delim} has no closing {delim} line"),
                    ));
                    continue;
                }
                heredoc = Some(body);
            }
        }
        let line = start + 1;
        let op = match (upper.as_str(), heredoc) {
            ("RUN", Some(body)) => run_flags(rest.split("<<").next().unwrap_or(""))
                .map(|(_, m)| Op::Run(Command::Shell(body), m)),
            (_, Some(_)) => Err(format!("{upper}: heredocs are read for RUN only")),
            ("FROM", None) => from(&rest),
            ("RUN", None) => run_flags(&rest).map(|(r, m)| Op::Run(command(r), m)),
            ("CMD", None) => Ok(Op::Cmd(command(&rest))),
            ("ENTRYPOINT", None) => Ok(Op::Entrypoint(command(&rest))),
            ("COPY", None) => copy(&rest, false),
            ("ADD", None) => copy(&rest, true),
            ("ENV", None) => env(&rest).map(Op::Env),
            ("ARG", None) => arg(&rest),
            ("WORKDIR", None) if !rest.is_empty() => Ok(Op::Workdir(rest.clone())),
            ("WORKDIR", None) => Err("WORKDIR needs a path".into()),
            ("SHELL", None) => match command(&rest) {
                Command::Exec(w) if !w.is_empty() => Ok(Op::Shell(w)),
                _ => Err("SHELL takes a JSON array, e.g. SHELL [\"/bin/sh\", \"-c\"]".into()),
            },
            (
                "USER" | "EXPOSE" | "LABEL" | "VOLUME" | "STOPSIGNAL" | "HEALTHCHECK"
                | "MAINTAINER" | "ONBUILD",
                None,
            ) => Ok(Op::Noted(upper.clone())),
            _ => Err(format!("unknown instruction {word}")),
        };
        match op {
            Ok(op) => {
                if out.is_empty() && !matches!(op, Op::From { .. } | Op::Arg(..)) {
                    problems.push((
                        line,
                        format!("{upper} before the first FROM (only ARG may come first)"),
                    ));
                }
                out.push(Instruction {
                    line,
                    op,
                    text: format!("{upper} {rest}").trim_end().to_string(),
                });
            }
            Err(e) => problems.push((line, e)),
        }
    }
    if !out.iter().any(|i| matches!(i.op, Op::From { .. })) && problems.is_empty() {
        problems.push((1, "no FROM instruction".into()));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Leading `--name=value` flags in order, and the rest.
fn flag_list(s: &str) -> (Vec<(String, String)>, &str) {
    let mut list = Vec::new();
    let mut rest = s.trim_start();
    while let Some(f) = rest.strip_prefix("--") {
        let end = f.find(char::is_whitespace).unwrap_or(f.len());
        let (k, v) = f[..end].split_once('=').unwrap_or((&f[..end], ""));
        list.push((k.to_string(), v.to_string()));
        rest = f[end..].trim_start();
    }
    (list, rest)
}

/// Leading `--name=value` flags (the last of a name counts), and the rest.
fn flags(s: &str) -> (BTreeMap<String, String>, &str) {
    let (list, rest) = flag_list(s);
    (list.into_iter().collect(), rest)
}

fn from(rest: &str) -> Result<Op, String> {
    let (f, rest) = flags(rest);
    if let Some(k) = f.keys().find(|k| *k != "platform") {
        return Err(format!("FROM --{k}: not supported (FROM takes --platform)"));
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        [image] => Ok(Op::From {
            image: image.to_string(),
            name: None,
        }),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => Ok(Op::From {
            image: image.to_string(),
            name: Some(name.to_ascii_lowercase()),
        }),
        _ => Err("FROM takes IMAGE [AS NAME]".into()),
    }
}

/// RUN's flags: cache mounts are kept; `--network=host` is what RUN has
/// anyway; other mounts (bind, secret, ssh, tmpfs) and flags are refused.
fn run_flags(rest: &str) -> Result<(&str, Vec<CacheMount>), String> {
    let (list, r) = flag_list(rest);
    let mut mounts = Vec::new();
    for (k, v) in list {
        match k.as_str() {
            "network" if v == "host" || v == "default" => {}
            "mount" => {
                let opts: BTreeMap<&str, &str> = v.split(',').map(|o| o.split_once('=').unwrap_or((o, ""))).collect();
                match (opts.get("type").copied(), opts.get("target").or(opts.get("dst")).or(opts.get("destination"))) {
                    (Some("cache"), Some(t)) if t.starts_with('/') => mounts.push(CacheMount {
                        id: opts.get("id").map_or_else(|| t.to_string(), |i| i.to_string()),
                        target: t.to_string(),
                    }),
                    (Some("cache"), _) => return Err(format!("RUN --mount={v}: a cache mount needs an absolute target=")),
                    (ty, _) => {
                        return Err(format!(
                            "RUN --mount=type={}: not supported (Kiln's RUN takes cache mounts only)",
                            ty.unwrap_or("bind")
                        ))
                    }
                }
            }
            _ => return Err(format!("RUN --{k}: not supported (Kiln runs RUN with the host's network; its only mounts are caches)")),
        }
    }
    Ok((r, mounts))
}

/// The exec form (a JSON array of strings) or else the shell form.
fn command(rest: &str) -> Command {
    if rest.trim_start().starts_with('[') {
        if let Ok(words) = serde_json::from_str::<Vec<String>>(rest.trim()) {
            return Command::Exec(words);
        }
    }
    Command::Shell(rest.to_string())
}

fn copy(rest: &str, add: bool) -> Result<Op, String> {
    let name = if add { "ADD" } else { "COPY" };
    let (f, rest) = flags(rest);
    let mut from = None;
    let mut chmod = None;
    for (k, v) in &f {
        match k.as_str() {
            "from" if !add => from = Some(v.to_ascii_lowercase()),
            "chmod" => {
                chmod = Some(
                    u32::from_str_radix(v, 8)
                        .map_err(|_| format!("{name} --chmod={v}: an octal mode, e.g. 755"))?,
                )
            }
            // Files in Kiln's rootfs belong to root; links are copies.
            "chown" | "link" => {}
            _ => return Err(format!("{name} --{k}: not supported")),
        }
    }
    let mut words: Vec<String> = match command(rest) {
        Command::Exec(w) => w,
        Command::Shell(s) => s.split_whitespace().map(str::to_string).collect(),
    };
    if words.len() < 2 {
        return Err(format!("{name} takes SOURCE... DEST"));
    }
    let dest = words.pop().unwrap();
    Ok(Op::Copy {
        add,
        from,
        chmod,
        sources: words,
        dest,
    })
}

/// `ENV K=V K2="V 2"`, or the old `ENV K V...`.
fn env(rest: &str) -> Result<Vec<(String, String)>, String> {
    let words = shell_words(rest)?;
    if words.is_empty() {
        return Err("ENV needs NAME=VALUE".into());
    }
    if !words[0].contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or("ENV NAME VALUE: the value is missing")?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    words
        .iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("ENV {w}: NAME=VALUE expected"))
        })
        .collect()
}

fn arg(rest: &str) -> Result<Op, String> {
    let words = shell_words(rest)?;
    match words.as_slice() {
        [w] => Ok(match w.split_once('=') {
            Some((k, v)) => Op::Arg(k.to_string(), Some(v.to_string())),
            None => Op::Arg(w.clone(), None),
        }),
        _ => Err("ARG takes one NAME[=DEFAULT]".into()),
    }
}

/// Words split at blanks outside quotes, quotes removed, `\` escaping the
/// next character.
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                have = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                have = true;
            }
            (_, c) => {
                cur.push(c);
                have = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

/// Substitutes `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alt}`
/// from `vars`; `\$` stays a literal `$`.
pub fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '\\' if b.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if b.get(i + 1) == Some(&'{') => {
                let Some(end) = b[i + 2..].iter().position(|&c| c == '}') else {
                    out.extend(&b[i..]);
                    break;
                };
                let inner: String = b[i + 2..i + 2 + end].iter().collect();
                let value = if let Some((n, d)) = inner.split_once(":-") {
                    vars(n)
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| expand(d, vars))
                } else if let Some((n, a)) = inner.split_once(":+") {
                    if vars(n).is_some_and(|v| !v.is_empty()) {
                        expand(a, vars)
                    } else {
                        String::new()
                    }
                } else {
                    vars(&inner).unwrap_or_default()
                };
                out.push_str(&value);
                i += 3 + end;
            }
            '$' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let n: String = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                out.push_str(&vars(&n).unwrap_or_default());
                i += 1 + n.len();
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_multi_stage_dockerfile() {
        let text =
            "# syntax=docker/dockerfile:1\nARG BASE=debian\nFROM ${BASE}:bookworm AS build\n\
                    ENV A=1 B=\"two words\"\nWORKDIR /src\nCOPY --chmod=755 a.sh b/ ./\n\
                    RUN set -e; \\\n  # a comment inside\n  echo hi \\\n  > /x\n\
                    RUN <<EOF\necho one\necho two\nEOF\n\
                    FROM scratch\nCOPY --from=build /x /x\nEXPOSE 80\nCMD [\"/x\", \"-v\"]\n";
        let p = parse(text).unwrap();
        assert_eq!(p[0].op, Op::Arg("BASE".into(), Some("debian".into())));
        assert_eq!(
            p[1].op,
            Op::From {
                image: "${BASE}:bookworm".into(),
                name: Some("build".into())
            }
        );
        assert_eq!(
            p[2].op,
            Op::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(
            p[4].op,
            Op::Copy {
                add: false,
                from: None,
                chmod: Some(0o755),
                sources: vec!["a.sh".into(), "b/".into()],
                dest: "./".into()
            }
        );
        assert_eq!(
            p[5].op,
            Op::Run(Command::Shell("set -e; echo hi > /x".into()), Vec::new())
        );
        assert_eq!(p[5].line, 7);
        assert_eq!(
            p[6].op,
            Op::Run(Command::Shell("echo one\necho two\n".into()), Vec::new())
        );
        assert_eq!(p[7].line, 15);
        assert_eq!(
            p[8].op,
            Op::Copy {
                add: false,
                from: Some("build".into()),
                chmod: None,
                sources: vec!["/x".into()],
                dest: "/x".into()
            }
        );
        assert_eq!(p[9].op, Op::Noted("EXPOSE".into()));
        assert_eq!(
            p[10].op,
            Op::Cmd(Command::Exec(vec!["/x".into(), "-v".into()]))
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let e = parse("FROM a\nFROBNICATE x\nCOPY onlyone\nRUN --mount=type=secret,id=k make\nFROM a b c\nRUN <<EOF\nnever closed\n").unwrap_err();
        let lines: Vec<usize> = e.iter().map(|p| p.0).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6], "{e:?}");
        assert!(e[0].1.contains("unknown instruction FROBNICATE"), "{e:?}");
        assert!(e[2].1.contains("RUN --mount"), "{e:?}");
        assert_eq!(
            parse("RUN x\n").unwrap_err(),
            [(
                1,
                "RUN before the first FROM (only ARG may come first)".into()
            )]
        );
        assert_eq!(
            parse("# just a comment\n").unwrap_err(),
            [(1, "no FROM instruction".into())]
        );
    }

    #[test]
    fn run_takes_cache_mounts() {
        let p = parse("FROM a\nRUN --mount=type=cache,target=/root/go/pkg/mod \\\n  --mount=type=cache,id=gb,target=/root/.cache/go-build \\\n  go build\n").unwrap();
        assert_eq!(
            p[1].op,
            Op::Run(
                Command::Shell("go build".into()),
                vec![
                    CacheMount {
                        id: "/root/go/pkg/mod".into(),
                        target: "/root/go/pkg/mod".into()
                    },
                    CacheMount {
                        id: "gb".into(),
                        target: "/root/.cache/go-build".into()
                    },
                ]
            )
        );
        let e = parse("FROM a\nRUN --mount=type=cache,target=rel x\nRUN --mount=type=bind,source=.,target=/s x\n").unwrap_err();
        assert!(
            e[0].1.contains("absolute target") && e[1].1.contains("type=bind: not supported"),
            "{e:?}"
        );
    }

    #[test]
    fn expands_variables() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand("$A-${A}-${B:-def}-${A:+alt}-${E:-empty}-\\$A-$", &vars),
            "1-1-def-alt-empty-$A-$"
        );
    }
}
