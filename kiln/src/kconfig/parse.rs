//! Kiln's Kconfig reader: Kconfig text to menu nodes and symbols, in one
//! pass and in time linear in the input.
//!
//! The contract, as Linux's kconfig and kconfiglib read the language:
//!
//! - A line's first word says what it is: an entry (`config`, `menu`,
//!   `choice`, `if`, `source`...), a property of the entry above (`bool`,
//!   `default`, `depends on`, `help`...), or else a preprocessor assignment
//!   (`X := value`, `X = value`, `X += value`) or a bare macro call.
//! - A backslash at the end of a line joins the next one to it; `#` starts
//!   a comment outside strings; strings take `"` or `'` and a backslash
//!   escapes the next character.
//! - Macros: `$(VAR)` and `$(fn,arg,...)` expand before a line is read, in
//!   names and strings alike. Variables set in the files come first, then
//!   the built-in functions (`info`, `warning-if`, `error-if`, `filename`,
//!   `lineno`, and `shell`, which runs its command only when the loader
//!   asks for it: `kiln kconfig` does, Kiln's own builds and the fuzzer do
//!   not), then the environment given to [`super::Tree::load`]; an
//!   undefined name is empty. `$(1)`, `$(2)` are a function's arguments. A
//!   variable that refers to itself is an error, as is `$(error-if,y,...)`.
//! - `source` names a file relative to the source root (or an absolute
//!   one), `rsource` one relative to the sourcing file; `osource` and
//!   `orsource` may find nothing; `*`, `?` and `[...]` in the last parts of
//!   a path match files, sorted. A file that sources itself (directly or
//!   through others), sources nested more than [`MAX_SOURCE_DEPTH`] deep and
//!   expressions nested more than [`MAX_NESTING`] deep are errors.
//! - Help text is the lines after `help` indented at least as much as its
//!   first line.
//!
//! Every error names the file and line.

use super::{and, blank, yes, CompareOperator, Expr, Item, Kind, Node, Tree};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Deepest chain of files sourcing each other.
pub const MAX_SOURCE_DEPTH: usize = 32;
/// Deepest nesting of parentheses and `!` in one expression.
pub const MAX_NESTING: usize = 100;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    And,
    Or,
    Not,
    Cmp(CompareOperator),
    Open,
    Close,
}

/// One logical line, read into tokens.
struct Line {
    no: usize,
    /// The first word (the keyword).
    kw: String,
    toks: Vec<Tok>,
    /// The line as written, for error messages.
    text: String,
}

struct File {
    path: PathBuf,
    raw: Vec<String>,
    /// Index of the next raw line.
    next: usize,
}

/// A preprocessor variable: its value and whether it expands where used
/// (`=`) or was expanded when set (`:=`).
struct Var {
    value: String,
    recursive: bool,
    expanding: usize,
}

/// What a property list belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Owner {
    Config,
    Choice,
    Menu,
    Comment,
}

pub struct Parser<'a> {
    t: &'a mut Tree,
    root: PathBuf,
    env: &'a HashMap<String, String>,
    vars: HashMap<String, Var>,
    files: Vec<File>,
    /// `source` lines being followed: (file, line) of each.
    chain: Vec<(PathBuf, usize)>,
    pending: Option<Line>,
    /// Line number of the line being read, for `$(lineno)` and errors.
    line: usize,
    /// Whether a symbol has been the defconfig list (the first one is).
    defconfig_list: bool,
    /// Whether `$(shell,...)` runs its command (else it is empty).
    run_shell: bool,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.' | '$')
}

const KEYWORDS: &[&str] = &[
    "config",
    "menuconfig",
    "choice",
    "endchoice",
    "menu",
    "endmenu",
    "comment",
    "if",
    "endif",
    "source",
    "rsource",
    "osource",
    "orsource",
    "mainmenu",
    "bool",
    "boolean",
    "tristate",
    "int",
    "hex",
    "string",
    "def_bool",
    "def_tristate",
    "def_int",
    "def_hex",
    "def_string",
    "prompt",
    "default",
    "depends",
    "select",
    "imply",
    "range",
    "help",
    "option",
    "modules",
    "optional",
    "visible",
    "transitional",
];

impl<'a> Parser<'a> {
    pub fn new(t: &'a mut Tree, root: &Path, env: &'a HashMap<String, String>) -> Parser<'a> {
        Parser {
            t,
            root: root.to_path_buf(),
            env,
            vars: HashMap::new(),
            files: Vec::new(),
            chain: Vec::new(),
            pending: None,
            line: 0,
            defconfig_list: false,
            run_shell: false,
        }
    }

    /// Lets `$(shell,...)` run its command, as kconfiglib does (Linux's
    /// tree probes its compiler so); without this it expands to nothing.
    pub fn run_shell(mut self, yes: bool) -> Self {
        self.run_shell = yes;
        self
    }

    /// Reads `text` as the file `path` into the menu under `parent`.
    pub fn file(&mut self, path: &Path, text: &str, parent: usize) -> Result<()> {
        self.files.push(File {
            path: path.to_path_buf(),
            raw: text.lines().map(str::to_string).collect(),
            next: 0,
        });
        let r = self.block(parent, None);
        self.files.pop();
        r
    }

    fn path(&self) -> PathBuf {
        self.files
            .last()
            .map(|f| f.path.clone())
            .unwrap_or_default()
    }

    fn at(&self, no: usize) -> String {
        format!("{}:{no}", self.path().display())
    }

    fn err<T>(&self, l: &Line, why: &str) -> Result<T> {
        let text: String = l.text.trim().chars().take(200).collect();
        bail!("{}: Kconfig syntax error: {why}: '{text}'", self.at(l.no))
    }

    // ---- lines -------------------------------------------------------

    /// The next raw line and its number, or None at the end of the file.
    fn raw(&mut self) -> Option<(usize, String)> {
        let f = self.files.last_mut()?;
        let l = f.raw.get(f.next)?.clone();
        f.next += 1;
        Some((f.next, l))
    }

    /// The next line that is an entry or property, tokenized, with macros
    /// expanded; assignments and bare macros are carried out on the way.
    fn next(&mut self) -> Result<Option<Line>> {
        if let Some(l) = self.pending.take() {
            return Ok(Some(l));
        }
        loop {
            let Some((no, mut text)) = self.raw() else {
                return Ok(None);
            };
            while text.ends_with('\\') {
                text.pop();
                match self.raw() {
                    Some((_, more)) => text.push_str(&more),
                    None => break,
                }
            }
            self.line = no;
            let t = text.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let first: String = t
                .chars()
                .take_while(|&c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                .collect();
            let rest = &t[first.len()..];
            let kw = if KEYWORDS.contains(&first.as_str())
                && !rest.starts_with(|c: char| is_word(c) && c != '$')
            {
                first
            } else if t.trim_matches(|c: char| c == '-' || c.is_whitespace()) == "help" {
                String::from("help")
            } else {
                self.assignment(no, &text)?;
                continue;
            };
            let code = strip_comment(&text);
            let expanded = if code.contains('$') {
                self.expand(code, &[])?
            } else {
                code.to_string()
            };
            let toks = match tokenize(&expanded) {
                Ok(v) => v,
                Err(why) if why == UNTERMINATED => {
                    bail!("{}: string without its closing quote", self.at(no))
                }
                Err(why) => {
                    let l = Line {
                        no,
                        kw,
                        toks: vec![],
                        text,
                    };
                    return self.err(&l, &why);
                }
            };
            return Ok(Some(Line { no, kw, toks, text }));
        }
    }

    fn push_back(&mut self, l: Line) {
        self.pending = Some(l);
    }

    /// `NAME := value`, `NAME = value`, `NAME += value`, or a line that is
    /// only a macro call (which must expand to nothing).
    fn assignment(&mut self, no: usize, text: &str) -> Result<()> {
        let t = text.trim_start();
        let mut name = String::new();
        let mut i = 0;
        let b = t.as_bytes();
        loop {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-') {
                name.push(b[i] as char);
                i += 1;
            }
            if t[i..].starts_with("$(") {
                let (v, end) = self.macro_at(t, i, &[])?;
                name.push_str(&v);
                i = end;
            } else {
                break;
            }
        }
        let rest = &t[i..];
        if rest.trim().is_empty() {
            if name.trim().is_empty() {
                return Ok(());
            }
            bail!(
                "{}: '{}' is neither a Kconfig keyword nor an assignment",
                self.at(no),
                name.trim()
            );
        }
        let rest = rest.trim_start();
        let (op, value) = if let Some(v) = rest.strip_prefix(":=") {
            (":=", v)
        } else if let Some(v) = rest.strip_prefix("+=") {
            ("+=", v)
        } else if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else {
            let word: String = t
                .split_whitespace()
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            bail!("{}: unknown Kconfig keyword '{word}'", self.at(no));
        };
        if name.is_empty() {
            bail!("{}: assignment without a variable name", self.at(no));
        }
        let value = value.trim_start().to_string();
        match (op, self.vars.get_mut(&name)) {
            ("+=", Some(v)) => {
                let add = if v.recursive {
                    value
                } else {
                    self.expand(&value, &[])?
                };
                let v = self.vars.get_mut(&name).unwrap();
                v.value.push(' ');
                v.value.push_str(&add);
            }
            (":=", _) => {
                let value = self.expand(&value, &[])?;
                self.vars.insert(
                    name,
                    Var {
                        value,
                        recursive: false,
                        expanding: 0,
                    },
                );
            }
            _ => {
                self.vars.insert(
                    name,
                    Var {
                        value,
                        recursive: true,
                        expanding: 0,
                    },
                );
            }
        }
        Ok(())
    }

    // ---- macros ------------------------------------------------------

    /// Expands every `$(...)` in `s`; `args` are `$(1)`, `$(2)`... (with
    /// the function's name as `$(0)`).
    fn expand(&mut self, s: &str, args: &[String]) -> Result<String> {
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while let Some(j) = s[i..].find("$(") {
            out.push_str(&s[i..i + j]);
            let (v, end) = self.macro_at(s, i + j, args)?;
            out.push_str(&v);
            i = end;
        }
        out.push_str(&s[i..]);
        Ok(out)
    }

    /// Expands the macro starting at `s[at..]` (`$(`): its value and the
    /// index after its `)`.
    fn macro_at(&mut self, s: &str, at: usize, args: &[String]) -> Result<(String, usize)> {
        let mut parts: Vec<String> = vec![String::new()];
        let mut i = at + 2;
        // Parentheses inside the call (not macros) nest: their commas and
        // closing parentheses are text.
        let mut nesting = 0usize;
        loop {
            let rest = &s[i..];
            let Some(j) = rest.find(['$', ',', '(', ')']) else {
                bail!(
                    "{}: macro without its closing ')': '{}'",
                    self.at(self.line),
                    &s[at..].chars().take(80).collect::<String>()
                );
            };
            parts.last_mut().unwrap().push_str(&rest[..j]);
            i += j;
            match s.as_bytes()[i] {
                b'$' if s[i..].starts_with("$(") => {
                    let (v, end) = self.macro_at(s, i, args)?;
                    parts.last_mut().unwrap().push_str(&v);
                    i = end;
                }
                b'$' => {
                    parts.last_mut().unwrap().push('$');
                    i += 1;
                }
                b'(' => {
                    nesting += 1;
                    parts.last_mut().unwrap().push('(');
                    i += 1;
                }
                b',' if nesting > 0 => {
                    parts.last_mut().unwrap().push(',');
                    i += 1;
                }
                b',' => {
                    parts.push(String::new());
                    i += 1;
                }
                b')' if nesting > 0 => {
                    nesting -= 1;
                    parts.last_mut().unwrap().push(')');
                    i += 1;
                }
                _ => {
                    i += 1;
                    break;
                }
            }
        }
        if parts.len() == 1 {
            if let Ok(n) = parts[0].trim().parse::<usize>() {
                if let Some(a) = args.get(n) {
                    return Ok((a.clone(), i));
                }
            }
        }
        Ok((self.call(&parts)?, i))
    }

    fn call(&mut self, parts: &[String]) -> Result<String> {
        let name = parts[0].as_str();
        let at = self.at(self.line);
        if let Some(v) = self.vars.get_mut(name) {
            if parts.len() == 1 && v.expanding > 0 {
                bail!("{at}: preprocessor variable {name} refers to itself");
            }
            if v.expanding > 100 {
                bail!("{at}: preprocessor function {name} calls itself more than 100 deep");
            }
            v.expanding += 1;
            let value = v.value.clone();
            let r = self.expand(&value, parts);
            if let Some(v) = self.vars.get_mut(name) {
                v.expanding -= 1;
            }
            return r;
        }
        let arg = |n: usize| parts.get(n).map(String::as_str).unwrap_or("");
        let want = |n: usize| -> Result<()> {
            if parts.len() - 1 != n {
                bail!(
                    "{at}: $({name},...) takes {n} argument{}, not {}",
                    if n == 1 { "" } else { "s" },
                    parts.len() - 1
                );
            }
            Ok(())
        };
        Ok(match name {
            "info" => {
                eprintln!("{at}: {}", parts[1..].join(","));
                String::new()
            }
            "warning-if" => {
                want(2)?;
                if arg(1) == "y" {
                    eprintln!("{at}: warning: {}", arg(2));
                }
                String::new()
            }
            "error-if" => {
                want(2)?;
                if arg(1) == "y" {
                    bail!("{at}: {}", arg(2));
                }
                String::new()
            }
            "filename" => self.path().display().to_string(),
            "lineno" => self.line.to_string(),
            "shell" if self.run_shell => {
                want(1)?;
                // As kconfiglib: sh -c, its output with newlines as spaces.
                match std::process::Command::new("sh")
                    .arg("-c")
                    .arg(arg(1))
                    .stdin(std::process::Stdio::null())
                    .output()
                {
                    Ok(o) => String::from_utf8_lossy(&o.stdout)
                        .trim_end_matches('\n')
                        .replace('\n', " "),
                    Err(e) => bail!("{at}: $(shell,...): running sh: {e}"),
                }
            }
            "shell" => String::new(),
            _ => self.env.get(name).cloned().unwrap_or_default(),
        })
    }

    // ---- entries -----------------------------------------------------

    /// Entries until `end` (`endmenu`, `endif`, `endchoice`) or, for a
    /// whole file, its end.
    fn block(&mut self, parent: usize, end: Option<&str>) -> Result<()> {
        loop {
            let Some(l) = self.next()? else {
                if let Some(e) = end {
                    bail!("{}: the file ends before its '{e}'", self.path().display());
                }
                return Ok(());
            };
            let file = self.path();
            match l.kw.as_str() {
                "config" | "menuconfig" => {
                    let [Tok::Word(name)] = &l.toks[1..] else {
                        return self.err(&l, "expected one symbol name");
                    };
                    let si = self.t.symbol(name, &file, l.no as u64);
                    let mut node = blank(Item::Sym(si), &file, l.no as u64);
                    node.menuconfig = l.kw == "menuconfig";
                    let (kind, _) = self.props(&mut node, Owner::Config, name)?;
                    let s = &mut self.t.syms[si];
                    if s.kind == Kind::Unknown {
                        s.kind = kind;
                    }
                    if s.help.is_empty() {
                        s.help = node.help.clone();
                    }
                    let n = self.t.push(parent, node);
                    self.t.syms[si].nodes.push(n);
                }
                "choice" => {
                    if l.toks.len() > 2 || l.toks.get(1).is_some_and(|t| !matches!(t, Tok::Word(_)))
                    {
                        return self.err(&l, "expected 'choice' or 'choice NAME'");
                    }
                    let ci = self.t.choices.len();
                    let mut node = blank(Item::Choice(ci), &file, l.no as u64);
                    let (kind, optional) = self.props(&mut node, Owner::Choice, "")?;
                    if !matches!(kind, Kind::Unknown | Kind::Bool | Kind::Tristate) {
                        bail!("{}: a choice is bool or tristate", self.at(l.no));
                    }
                    self.t.choices.push(super::Choice {
                        kind,
                        nodes: vec![],
                        defaults: vec![],
                        direct_dep: super::no(),
                        optional,
                        members: vec![],
                    });
                    let n = self.t.push(parent, node);
                    self.t.choices[ci].nodes.push(n);
                    self.block(n, Some("endchoice"))?;
                }
                "menu" | "comment" => {
                    let [Tok::Str(prompt)] = &l.toks[1..] else {
                        return self.err(&l, "expected one quoted prompt");
                    };
                    let menu = l.kw == "menu";
                    let mut node = blank(
                        if menu { Item::Menu } else { Item::Comment },
                        &file,
                        l.no as u64,
                    );
                    node.prompt = Some((prompt.clone(), yes()));
                    self.props(
                        &mut node,
                        if menu { Owner::Menu } else { Owner::Comment },
                        "",
                    )?;
                    let n = self.t.push(parent, node);
                    if menu {
                        self.block(n, Some("endmenu"))?;
                    }
                }
                "if" => {
                    let mut node = blank(Item::If, &file, l.no as u64);
                    node.dep = self.whole_expr(&l, 1, true)?;
                    let n = self.t.push(parent, node);
                    self.block(n, Some("endif"))?;
                }
                "endmenu" | "endif" | "endchoice" => {
                    if end != Some(l.kw.as_str()) {
                        return self.err(
                            &l,
                            &format!(
                                "'{}' without its opening line{}",
                                l.kw,
                                end.map(|e| format!(" (a '{e}' is due first)"))
                                    .unwrap_or_default()
                            ),
                        );
                    }
                    if l.toks.len() > 1 {
                        return self.err(&l, "nothing may follow it");
                    }
                    return Ok(());
                }
                "source" | "rsource" | "osource" | "orsource" => {
                    let [Tok::Str(p)] = &l.toks[1..] else {
                        return self.err(&l, "expected one quoted path");
                    };
                    self.source(&l.kw, p, l.no, parent)?;
                }
                "mainmenu" => {
                    let [Tok::Str(p)] = &l.toks[1..] else {
                        return self.err(&l, "expected one quoted title");
                    };
                    self.t.mainmenu = p.clone();
                }
                kw => return self.err(&l, &format!("'{kw}' outside a config, choice or menu")),
            }
        }
    }

    fn source(&mut self, kw: &str, p: &str, no: usize, parent: usize) -> Result<()> {
        let here = self.path();
        let dir = here.parent().unwrap_or(Path::new(".")).to_path_buf();
        let relative = kw == "rsource" || kw == "orsource";
        let optional = kw == "osource" || kw == "orsource";
        let pattern = if relative {
            dir.join(p)
        } else {
            self.root.join(p)
        };
        let found = glob(&pattern);
        if found.is_empty() {
            if optional {
                return Ok(());
            }
            let hint = if !relative
                && !Path::new(p).is_absolute()
                && glob(&dir.join(p)).first().is_some()
            {
                format!(" (`source` is relative to the source root, {}; `rsource \"{p}\"` names the file beside this one)", self.root.display())
            } else {
                String::new()
            };
            bail!(
                "{}:{no}: sourced file {} not found{hint}",
                here.display(),
                pattern.display()
            );
        }
        for file in found {
            let canon = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            let same = |f: &Path| std::fs::canonicalize(f).is_ok_and(|c| c == canon);
            if self.files.iter().any(|f| same(&f.path)) {
                let mut chain: Vec<String> = self
                    .chain
                    .iter()
                    .map(|(f, l)| format!("{}:{l}", f.display()))
                    .collect();
                chain.push(format!("{}:{no}", here.display()));
                bail!(
                    "{}:{no}: `{kw} \"{p}\"` makes a loop: {} sources itself ({})",
                    here.display(),
                    file.display(),
                    chain.join(" -> ")
                );
            }
            if self.files.len() >= MAX_SOURCE_DEPTH {
                bail!(
                    "{}:{no}: `source` nested more than {MAX_SOURCE_DEPTH} files deep",
                    here.display()
                );
            }
            let text = match std::fs::read(&file) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => bail!("{}:{no}: reading {}: {e}", here.display(), file.display()),
            };
            self.chain.push((here.clone(), no));
            let line = self.line;
            let r = self.file(&file, &text, parent);
            self.line = line;
            self.chain.pop();
            r?;
        }
        Ok(())
    }

    // ---- properties --------------------------------------------------

    /// The property lines after an entry, into `node`; the first line that
    /// is not a property is left for the block.
    /// Returns the type given and whether the choice is `optional`.
    fn props(&mut self, node: &mut Node, owner: Owner, name: &str) -> Result<(Kind, bool)> {
        let mut kind = Kind::Unknown;
        let mut optional = false;
        loop {
            let Some(l) = self.next()? else {
                return Ok((kind, optional));
            };
            let word = |i: usize| match l.toks.get(i) {
                Some(Tok::Word(w)) => Some(w.as_str()),
                _ => None,
            };
            let typed = |k: &str| match k {
                "bool" | "boolean" | "def_bool" => Some(Kind::Bool),
                "tristate" | "def_tristate" => Some(Kind::Tristate),
                "int" | "def_int" => Some(Kind::Int),
                "hex" | "def_hex" => Some(Kind::Hex),
                "string" | "def_string" => Some(Kind::Str),
                _ => None,
            };
            match l.kw.as_str() {
                k @ ("bool" | "boolean" | "tristate" | "int" | "hex" | "string") => {
                    if owner == Owner::Menu || owner == Owner::Comment {
                        return self.err(&l, "a menu or comment has no type");
                    }
                    kind = typed(k).unwrap();
                    match l.toks.get(1) {
                        None => {}
                        Some(Tok::Str(p)) => {
                            let cond = self.cond_at(&l, 2)?;
                            node.prompt = Some((p.clone(), cond));
                        }
                        Some(_) => {
                            return self.err(&l, "a type is followed by a quoted prompt or nothing")
                        }
                    }
                }
                k @ ("def_bool" | "def_tristate" | "def_int" | "def_hex" | "def_string") => {
                    kind = typed(k).unwrap();
                    let (value, cond) = self.value_and_cond(&l, 1)?;
                    node.defaults.push((value, cond));
                }
                "prompt" => {
                    let Some(Tok::Str(p)) = l.toks.get(1) else {
                        return self.err(&l, "expected a quoted prompt");
                    };
                    let cond = self.cond_at(&l, 2)?;
                    node.prompt = Some((p.clone(), cond));
                }
                "default" => {
                    let (value, cond) = self.value_and_cond(&l, 1)?;
                    node.defaults.push((value, cond));
                }
                "depends" => {
                    if word(1) != Some("on") {
                        return self.err(&l, "expected 'depends on'");
                    }
                    let e = self.whole_expr(&l, 2, true)?;
                    node.dep = and(&node.dep, e);
                }
                "visible" => {
                    if word(1) != Some("if") || owner != Owner::Menu {
                        return self.err(&l, "'visible if' belongs to a menu");
                    }
                    let e = self.whole_expr(&l, 2, true)?;
                    node.visible = and(&node.visible, e);
                }
                k @ ("select" | "imply") => {
                    let Some(target) = word(1).filter(|w| !is_const_word(w)) else {
                        return self.err(&l, &format!("{k} takes a symbol name"));
                    };
                    let target = target.to_string();
                    let cond = self.cond_at(&l, 2)?;
                    if k == "select" {
                        &mut node.selects
                    } else {
                        &mut node.implies
                    }
                    .push((target, cond));
                }
                "range" => {
                    let (Some(lo), Some(hi)) =
                        (l.toks.get(1).and_then(atom), l.toks.get(2).and_then(atom))
                    else {
                        return self.err(&l, "expected 'range LOW HIGH'");
                    };
                    let cond = self.cond_at(&l, 3)?;
                    node.ranges.push((lo, hi, cond));
                }
                "help" => {
                    node.help = self.help();
                }
                "option" => match (word(1), l.toks.get(2), l.toks.get(3)) {
                    (Some("modules"), None, _) => self.t.modules_name = Some(name.to_string()),
                    (Some("env"), Some(Tok::Cmp(CompareOperator::Equal)), Some(Tok::Str(var))) => {
                        if let Some(v) = self.env.get(var) {
                            node.defaults.push((Expr::Const(v.clone()), yes()));
                        }
                        self.auto(name);
                    }
                    (Some("defconfig_list"), None, _) => {
                        if !self.defconfig_list {
                            self.defconfig_list = true;
                            self.auto(name);
                        }
                    }
                    (Some("allnoconfig_y"), None, _) => {}
                    _ => return self.err(&l, "unknown option"),
                },
                "modules" => self.t.modules_name = Some(name.to_string()),
                "optional" if owner == Owner::Choice => optional = true,
                "transitional" => {}
                _ => {
                    self.push_back(l);
                    return Ok((kind, optional));
                }
            }
        }
    }

    fn auto(&mut self, name: &str) {
        if let Some(&i) = self.t.index.get(name) {
            self.t.syms[i].auto = true;
        }
    }

    /// A help text: the following lines indented at least as deep as the
    /// first of them (tabs count to the next multiple of 8).
    fn help(&mut self) -> String {
        let indent = |l: &str| {
            let mut n = 0;
            for c in l.chars() {
                match c {
                    ' ' => n += 1,
                    '\t' => n = (n / 8 + 1) * 8,
                    _ => break,
                }
            }
            n
        };
        let mut lines: Vec<String> = Vec::new();
        let mut first: Option<usize> = None;
        loop {
            let Some(f) = self.files.last() else { break };
            let Some(raw) = f.raw.get(f.next) else { break };
            if raw.trim().is_empty() {
                if first.is_some() {
                    lines.push(String::new());
                }
                self.files.last_mut().unwrap().next += 1;
                continue;
            }
            let here = indent(raw);
            match first {
                None if here == 0 => break,
                None => first = Some(here),
                Some(i) if here < i => break,
                _ => {}
            }
            let cut = first.unwrap();
            let expanded = expand_tabs(raw);
            lines.push(expanded.get(cut..).unwrap_or("").to_string());
            self.files.last_mut().unwrap().next += 1;
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines.join("\n").trim_end().to_string()
    }

    // ---- expressions -------------------------------------------------

    /// `if EXPR` from token `i` to the end, or yes when the line ends there.
    fn cond_at(&self, l: &Line, i: usize) -> Result<Expr> {
        match l.toks.get(i) {
            None => Ok(yes()),
            Some(Tok::Word(w)) if w == "if" => self.whole_expr(l, i + 1, true),
            Some(_) => self.err(l, "expected 'if' or the end of the line"),
        }
    }

    /// A value expression, then an optional `if` condition.
    fn value_and_cond(&self, l: &Line, i: usize) -> Result<(Expr, Expr)> {
        let mut p = ExprParser {
            toks: &l.toks,
            i,
            depth: 0,
        };
        let value = p.or().map_err(|why| self.err::<()>(l, &why).unwrap_err())?;
        let cond = self.cond_at(l, p.i)?;
        Ok((value, cond))
    }

    /// An expression filling the rest of the line.
    fn whole_expr(&self, l: &Line, i: usize, cond: bool) -> Result<Expr> {
        let mut p = ExprParser {
            toks: &l.toks,
            i,
            depth: 0,
        };
        let e = p.or().map_err(|why| self.err::<()>(l, &why).unwrap_err())?;
        if p.i != l.toks.len() {
            return self.err(l, "unexpected words after the expression");
        }
        Ok(if cond { in_condition(e) } else { e })
    }
}

/// In a condition a plain `m` means `m && MODULES`, as in Linux.
fn in_condition(e: Expr) -> Expr {
    match e {
        Expr::Const(c) if c == "m" => Expr::And(vec![Expr::Const(c), Expr::Modules]),
        Expr::Not(x) => Expr::Not(Box::new(in_condition(*x))),
        Expr::And(v) => Expr::And(v.into_iter().map(in_condition).collect()),
        Expr::Or(v) => Expr::Or(v.into_iter().map(in_condition).collect()),
        other => other,
    }
}

fn is_const_word(w: &str) -> bool {
    matches!(w, "y" | "m" | "n") || super::num(w).is_some()
}

/// A symbol or constant operand.
fn atom(t: &Tok) -> Option<Expr> {
    match t {
        Tok::Str(s) => Some(Expr::Const(s.clone())),
        Tok::Word(w) if is_const_word(w) => Some(Expr::Const(w.clone())),
        Tok::Word(w) => Some(Expr::Sym(w.clone())),
        _ => None,
    }
}

struct ExprParser<'t> {
    toks: &'t [Tok],
    i: usize,
    depth: usize,
}

impl ExprParser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut v = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut v = vec![self.factor()?];
        while self.peek() == Some(&Tok::And) {
            self.i += 1;
            v.push(self.factor()?);
        }
        Ok(if v.len() == 1 {
            v.pop().unwrap()
        } else {
            Expr::And(v)
        })
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(format!("parentheses nested more than {MAX_NESTING} deep"));
        }
        Ok(())
    }

    fn factor(&mut self) -> Result<Expr, String> {
        let Some(t) = self.peek().cloned() else {
            return Err("an expression is missing".into());
        };
        self.i += 1;
        match t {
            Tok::Not => {
                self.deeper()?;
                let e = self.factor()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(e)))
            }
            Tok::Open => {
                self.deeper()?;
                let e = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::Close) {
                    return Err("a '(' without its ')'".into());
                }
                self.i += 1;
                Ok(e)
            }
            t => {
                let Some(a) = atom(&t) else {
                    return Err(format!("unexpected {}", describe(&t)));
                };
                if let Some(Tok::Cmp(op)) = self.peek().cloned() {
                    self.i += 1;
                    let b = self.peek().and_then(atom).ok_or_else(|| {
                        String::from("a comparison needs a symbol or value on its right")
                    })?;
                    self.i += 1;
                    return Ok(Expr::Cmp(op, Box::new(a), Box::new(b)));
                }
                Ok(a)
            }
        }
    }
}

fn describe(t: &Tok) -> &'static str {
    match t {
        Tok::And => "'&&'",
        Tok::Or => "'||'",
        Tok::Not => "'!'",
        Tok::Cmp(_) => "a comparison",
        Tok::Open => "'('",
        Tok::Close => "')'",
        Tok::Word(_) | Tok::Str(_) => "a word",
    }
}

const UNTERMINATED: &str = "unterminated string";

/// The line without its comment (a `#` outside quotes and macros).
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') if depth > 0 || s[..i].ends_with('$') => depth += 1,
            (None, ')') if depth > 0 => depth -= 1,
            (None, '#') if depth == 0 => return &s[..i],
            _ => {}
        }
    }
    s
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let two = |n: char| b.get(i + 1) == Some(&n);
        match c {
            ' ' | '\t' | '\r' | '\x0c' => i += 1,
            '#' => break,
            '"' | '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(UNTERMINATED.into()),
                        Some('\\') => {
                            if let Some(&n) = b.get(i + 1) {
                                v.push(n);
                            }
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&o) => {
                            v.push(o);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            '&' if two('&') => {
                out.push(Tok::And);
                i += 2;
            }
            '|' if two('|') => {
                out.push(Tok::Or);
                i += 2;
            }
            '!' if two('=') => {
                out.push(Tok::Cmp(CompareOperator::NotEqual));
                i += 2;
            }
            '!' => {
                out.push(Tok::Not);
                i += 1;
            }
            '=' => {
                out.push(Tok::Cmp(CompareOperator::Equal));
                i += 1;
            }
            '<' | '>' => {
                let eq = two('=');
                out.push(Tok::Cmp(match (c, eq) {
                    ('<', false) => CompareOperator::LowerThan,
                    ('<', true) => CompareOperator::LowerOrEqual,
                    (_, false) => CompareOperator::GreaterThan,
                    _ => CompareOperator::GreaterOrEqual,
                }));
                i += 1 + eq as usize;
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            c if is_word(c) => {
                let start = i;
                while i < b.len() && is_word(b[i]) {
                    i += 1;
                }
                out.push(Tok::Word(b[start..i].iter().collect()));
            }
            c => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(out)
}

fn expand_tabs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut col = 0;
    for c in s.chars() {
        if c == '\t' {
            let n = 8 - col % 8;
            out.extend(std::iter::repeat_n(' ', n));
            col += n;
        } else {
            out.push(c);
            col += 1;
        }
    }
    out
}

/// Files matching `pattern` (`*`, `?`, `[...]` in any part), sorted; the
/// path itself when it has no wildcard and is a file.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let s = pattern.to_string_lossy();
    if !s.contains(['*', '?', '[']) {
        return if pattern.is_file() {
            vec![pattern.to_path_buf()]
        } else {
            vec![]
        };
    }
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for base in &found {
            if !part.contains(['*', '?', '[']) {
                next.push(base.join(comp));
                continue;
            }
            let dir = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base.as_path()
            };
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && wildcard(&part, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found.sort();
    found
}

/// Shell-style matching of one path part.
fn wildcard(p: &str, n: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (p.chars().collect(), n.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|&c| c == ']').map(|e| e + 1) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let set = &p[1..end];
                let (neg, set) = match set.first() {
                    Some('!' | '^') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut k = 0;
                while k < set.len() {
                    if k + 2 < set.len() && set[k + 1] == '-' {
                        hit |= set[k] <= c && c <= set[k + 2];
                        k += 3;
                    } else {
                        hit |= set[k] == c;
                        k += 1;
                    }
                }
                hit != neg && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_strings_and_comments() {
        assert_eq!(
            tokenize(r#"default "a \"b\" \\c" if !!X && (Y||Z) != 'q' # note"#).unwrap(),
            vec![
                Tok::Word("default".into()),
                Tok::Str(r#"a "b" \c"#.into()),
                Tok::Word("if".into()),
                Tok::Not,
                Tok::Not,
                Tok::Word("X".into()),
                Tok::And,
                Tok::Open,
                Tok::Word("Y".into()),
                Tok::Or,
                Tok::Word("Z".into()),
                Tok::Close,
                Tok::Cmp(CompareOperator::NotEqual),
                Tok::Str("q".into()),
            ]
        );
        assert_eq!(tokenize("string \"open").unwrap_err(), UNTERMINATED);
        assert_eq!(strip_comment("int # note"), "int ");
        assert_eq!(strip_comment("default \"#1\" # x"), "default \"#1\" ");
        assert_eq!(strip_comment("default $(f,#) # x"), "default $(f,#) ");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("Kconfig.*", "Kconfig.arm"));
        assert!(!wildcard("Kconfig.*", "Kconfig"));
        assert!(wildcard("K?[a-c]", "Kxb"));
        assert!(!wildcard("K[!a-c]", "Kb"));
    }
}
