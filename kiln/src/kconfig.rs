//! Kconfig: the configuration language of Linux and Unikraft, as Kiln uses it.
//!
//! Parsing is done by `nom-kconfig` (the `kconfig-parser` crate cannot parse
//! `choice` or `if`/`endif`); this module turns its syntax tree into symbols
//! with their inherited dependencies, and resolves values the way the Linux
//! kernel's kconfig does: a symbol is only as enabled as its dependencies
//! allow, `select` forces a value from below, the first default whose
//! condition holds wins, values outside a `range` or for invisible symbols are
//! dropped, and a `choice` enables exactly one of its visible members.
//!
//! Not yet supported: `imply` (parsed, treated as no-op), `visible if` on
//! menus, tristate `m` as distinct from `y` (Kiln has no modules).

use anyhow::{anyhow, bail, Context, Result};
use nom_kconfig::attribute::expression::{AndExpression, Atom, CompareOperand, CompareOperator, OrExpression, Term};
use nom_kconfig::attribute::r#type::Type;
use nom_kconfig::attribute::range::RangeBound;
use nom_kconfig::attribute::Attribute;
use nom_kconfig::symbol::{ConstantSymbol, Symbol};
use nom_kconfig::{parse_kconfig, Entry, KconfigFile, KconfigInput};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A symbol's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Hex,
    Str,
}

/// An expression, reduced from nom-kconfig's tree.
#[derive(Clone, Debug)]
pub enum Expr {
    Const(String),
    Sym(String),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(CompareOperator, Box<Expr>, Box<Expr>),
}

fn yes() -> Expr {
    Expr::Const("y".into())
}

/// One `config` symbol with everything that decides its value.
#[derive(Clone, Debug)]
pub struct Sym {
    pub name: String,
    pub kind: Kind,
    pub prompt: Option<(String, Expr)>,
    pub defaults: Vec<(Expr, Expr)>,
    /// Own and inherited (menu, if, choice) dependencies.
    pub deps: Expr,
    pub selects: Vec<(String, Expr)>,
    pub ranges: Vec<(Expr, Expr, Expr)>,
    pub help: String,
    pub choice: Option<usize>,
    /// Top-level menu (Architecture, Platform, Libraries, Application).
    pub menu: String,
    pub file: PathBuf,
    pub line: u64,
}

/// A `choice` group.
#[derive(Clone, Debug)]
pub struct Choice {
    #[allow(dead_code)] // for the menu
    pub name: String,
    #[allow(dead_code)] // for the menu
    pub prompt: String,
    pub defaults: Vec<(String, Expr)>,
    pub deps: Expr,
    pub members: Vec<String>,
}

/// A loaded Kconfig tree.
#[derive(Default, Debug)]
pub struct Tree {
    pub syms: Vec<Sym>,
    pub choices: Vec<Choice>,
    index: HashMap<String, usize>,
}

/// Resolved values: `None` means the symbol has no value (dependencies unmet).
pub type Values = BTreeMap<String, Option<String>>;

fn line_of(text: &str, needle_words: &[&str]) -> u64 {
    text.lines()
        .position(|l| {
            let mut w = l.split_whitespace();
            needle_words.iter().all(|n| w.next() == Some(n))
        })
        .map_or(1, |i| i as u64 + 1)
}

fn conv_symbol(s: &Symbol) -> Expr {
    match s {
        Symbol::NonConstant(n) => Expr::Sym(n.clone()),
        Symbol::Constant(c) => Expr::Const(match c {
            ConstantSymbol::Integer(i) => i.to_string(),
            ConstantSymbol::Hex(h) => h.clone(),
            ConstantSymbol::Boolean(b) => if *b { "y" } else { "n" }.into(),
            ConstantSymbol::String(s) => s.clone(),
            ConstantSymbol::Tristate(t) => match t {
                nom_kconfig::tristate::Tristate::No => "n",
                _ => "y",
            }
            .into(),
        }),
    }
}

fn conv_operand(o: &CompareOperand) -> Result<Expr> {
    match o {
        CompareOperand::Symbol(s) => Ok(conv_symbol(s)),
        CompareOperand::Macro(m) => bail!("macros in expressions are not supported: {m:?}"),
    }
}

fn conv_atom(a: &Atom) -> Result<Expr> {
    Ok(match a {
        Atom::Symbol(s) => conv_symbol(s),
        Atom::Compare(c) => Expr::Cmp(c.operator.clone(), Box::new(conv_operand(&c.left)?), Box::new(conv_operand(&c.right)?)),
        Atom::Parenthesis(e) => conv(e)?,
        Atom::Macro(m) => bail!("macros in expressions are not supported: {m:?}"),
    })
}

fn conv_term(t: &Term) -> Result<Expr> {
    Ok(match t {
        Term::Not(a) => Expr::Not(Box::new(conv_atom(a)?)),
        Term::Atom(a) => conv_atom(a)?,
    })
}

fn conv_and(a: &AndExpression) -> Result<Expr> {
    Ok(match a {
        AndExpression::Term(t) => conv_term(t)?,
        AndExpression::Expression(ts) => Expr::And(ts.iter().map(conv_term).collect::<Result<_>>()?),
    })
}

/// Converts a nom-kconfig expression.
pub fn conv(e: &OrExpression) -> Result<Expr> {
    Ok(match e {
        OrExpression::Term(a) => conv_and(a)?,
        OrExpression::Expression(v) => Expr::Or(v.iter().map(conv_and).collect::<Result<_>>()?),
    })
}

fn and(a: &Expr, b: Expr) -> Expr {
    match a {
        Expr::Const(c) if c == "y" => b,
        _ => Expr::And(vec![a.clone(), b]),
    }
}

fn opt_cond(c: &Option<OrExpression>) -> Result<Expr> {
    c.as_ref().map_or(Ok(yes()), conv)
}

fn bound(b: &RangeBound) -> Expr {
    match b {
        RangeBound::Hex(h) => Expr::Const(h.clone()),
        RangeBound::Number(n) => Expr::Const(n.to_string()),
        RangeBound::Symbol(s) | RangeBound::Variable(s) => Expr::Sym(s.clone()),
    }
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    menu: &'a str,
}

impl Tree {
    /// Parses one Kconfig file and adds its symbols under a top-level menu.
    pub fn add_file(&mut self, path: &Path, menu: &str) -> Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let vars: HashMap<String, String> = HashMap::new();
        let kf = KconfigFile::new_with_vars(
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            path.to_path_buf(),
            &vars,
            &vars,
        );
        let (rest, k) = parse_kconfig(KconfigInput::new_extra(&text, kf))
            .map_err(|e| anyhow!("{}: Kconfig syntax error: {}", path.display(), short(&e.to_string())))?;
        let rest = rest.fragment();
        if !rest.trim().is_empty() {
            let consumed = text.len() - rest.len();
            let line = text[..consumed].lines().count().max(1) as u64 + u64::from(text[..consumed].ends_with('\n'));
            let snippet = rest.trim_start().lines().next().unwrap_or("");
            bail!("{}:{line}: Kconfig syntax error near '{snippet}'", path.display());
        }
        let ctx = Ctx { file: path, text: &text, menu };
        self.entries(&ctx, &k.entries, &yes(), None)
    }

    fn entries(&mut self, ctx: &Ctx, entries: &[Entry], deps: &Expr, choice: Option<usize>) -> Result<()> {
        for e in entries {
            match e {
                Entry::Config(c) | Entry::MenuConfig(c) => self.config(ctx, &c.symbol, &c.attributes, deps, choice)?,
                Entry::Choice(ch) => {
                    let mut prompt = String::new();
                    let mut cdeps = deps.clone();
                    let mut defaults = Vec::new();
                    for a in &ch.options {
                        match a {
                            Attribute::Prompt(p) => prompt = p.prompt.clone(),
                            Attribute::DependsOn(d) => cdeps = and(&cdeps, conv(&d.expression)?),
                            Attribute::Default(d) => {
                                if let Expr::Sym(s) = conv(&d.expression)? {
                                    defaults.push((s, opt_cond(&d.r#if)?));
                                }
                            }
                            _ => {}
                        }
                    }
                    let idx = self.choices.len();
                    self.choices.push(Choice {
                        name: ch.name.clone().unwrap_or_else(|| format!("<choice {idx}>")),
                        prompt,
                        defaults,
                        deps: cdeps.clone(),
                        members: Vec::new(),
                    });
                    self.entries(ctx, &ch.entries, &cdeps, Some(idx))?;
                }
                Entry::Menu(m) => {
                    let mut d = deps.clone();
                    for dep in &m.depends_on {
                        d = and(&d, conv(&dep.expression)?);
                    }
                    self.entries(ctx, &m.entries, &d, None)?;
                }
                Entry::If(i) => {
                    let d = and(deps, conv(&i.condition)?);
                    self.entries(ctx, &i.entries, &d, choice)?;
                }
                Entry::Source(s) => {
                    for k in &s.kconfigs {
                        self.entries(ctx, &k.entries, deps, None)?;
                    }
                }
                Entry::Comment(_) | Entry::MainMenu(_) => {}
                other => bail!("{}: unsupported Kconfig entry {other:?}", ctx.file.display()),
            }
        }
        Ok(())
    }

    fn config(&mut self, ctx: &Ctx, name: &str, attrs: &[Attribute], deps: &Expr, choice: Option<usize>) -> Result<()> {
        let line = line_of(ctx.text, &["config", name]).max(line_of(ctx.text, &["menuconfig", name]));
        let mut s = Sym {
            name: name.into(),
            kind: Kind::Bool,
            prompt: None,
            defaults: Vec::new(),
            deps: deps.clone(),
            selects: Vec::new(),
            ranges: Vec::new(),
            help: String::new(),
            choice,
            menu: ctx.menu.into(),
            file: ctx.file.to_path_buf(),
            line,
        };
        let mut typed = false;
        for a in attrs {
            match a {
                Attribute::Type(t) => {
                    typed = true;
                    let cond = opt_cond(&t.r#if)?;
                    let (kind, prompt, def) = match &t.r#type {
                        Type::Bool(p) | Type::Tristate(p) => (Kind::Bool, p.clone(), None),
                        Type::Int(p) => (Kind::Int, p.clone(), None),
                        Type::Hex(p) => (Kind::Hex, p.clone(), None),
                        Type::String(p) => (Kind::Str, p.clone(), None),
                        Type::DefBool(e) | Type::DefTristate(e) => (Kind::Bool, None, Some(e)),
                        Type::DefInt(e) => (Kind::Int, None, Some(e)),
                        Type::DefHex(e) => (Kind::Hex, None, Some(e)),
                        Type::DefString(e) => (Kind::Str, None, Some(e)),
                    };
                    s.kind = kind;
                    if let Some(p) = prompt {
                        s.prompt = Some((p, cond.clone()));
                    }
                    if let Some(e) = def {
                        s.defaults.push((conv(e)?, cond));
                    }
                }
                Attribute::Prompt(p) => s.prompt = Some((p.prompt.clone(), opt_cond(&p.r#if)?)),
                Attribute::Default(d) => s.defaults.push((conv(&d.expression)?, opt_cond(&d.r#if)?)),
                Attribute::DependsOn(d) => s.deps = and(&s.deps, conv(&d.expression)?),
                Attribute::Select(x) => s.selects.push((x.symbol.clone(), opt_cond(&x.r#if)?)),
                Attribute::Range(r) => {
                    s.ranges.push((bound(&r.lower_bound), bound(&r.upper_bound), opt_cond(&r.r#if)?))
                }
                Attribute::Help(h) => s.help = h.clone(),
                _ => {}
            }
        }
        if let Some(&i) = self.index.get(name) {
            // A second definition adds properties (as in Linux); keep the first location.
            let prev = &mut self.syms[i];
            prev.defaults.extend(s.defaults);
            prev.selects.extend(s.selects);
            if prev.prompt.is_none() {
                prev.prompt = s.prompt;
            }
            return Ok(());
        }
        if !typed {
            bail!("{}:{line}: symbol {name} has no type (bool, int, hex, string)", ctx.file.display());
        }
        if let Some(c) = choice {
            self.choices[c].members.push(name.into());
        }
        self.index.insert(name.into(), self.syms.len());
        self.syms.push(s);
        Ok(())
    }

    /// Looks a symbol up by name (without `CONFIG_`).
    pub fn get(&self, name: &str) -> Option<&Sym> {
        self.index.get(name).map(|&i| &self.syms[i])
    }

    /// Checks references: every selected or depended-on symbol exists, and
    /// there are no dependency loops.
    pub fn check(&self) -> Result<()> {
        for s in &self.syms {
            for (t, _) in &s.selects {
                let Some(target) = self.get(t) else {
                    bail!("{}:{}: {} selects undefined symbol {t}", s.file.display(), s.line, s.name);
                };
                if target.kind != Kind::Bool {
                    bail!("{}:{}: {} selects {t}, which is not a bool", s.file.display(), s.line, s.name);
                }
            }
            let mut refs = Vec::new();
            syms_in(&s.deps, &mut refs);
            for r in refs {
                if self.get(&r).is_none() {
                    bail!("{}:{}: {} depends on undefined symbol {r}", s.file.display(), s.line, s.name);
                }
            }
        }
        // Edges: a symbol's value depends on its dependencies and on whoever selects it.
        let mut edges: HashMap<&str, Vec<String>> = HashMap::new();
        for s in &self.syms {
            let mut refs = Vec::new();
            syms_in(&s.deps, &mut refs);
            edges.entry(&s.name).or_default().extend(refs);
            for (t, _) in &s.selects {
                edges.entry(t.as_str()).or_default().push(s.name.clone());
            }
        }
        let mut state: HashMap<&str, u8> = HashMap::new();
        fn dfs<'a>(
            n: &'a str,
            edges: &'a HashMap<&str, Vec<String>>,
            state: &mut HashMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match state.get(n) {
                Some(2) => return None,
                Some(1) => {
                    let start = stack.iter().position(|s| *s == n).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(n.to_string());
                    return Some(cycle);
                }
                _ => {}
            }
            state.insert(n, 1);
            stack.push(n);
            for m in edges.get(n).into_iter().flatten() {
                if let Some(c) = dfs(m, edges, state, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            state.insert(n, 2);
            None
        }
        for s in &self.syms {
            if let Some(cycle) = dfs(&s.name, &edges, &mut state, &mut Vec::new()) {
                let first = self.get(&cycle[0]).unwrap();
                bail!(
                    "{}:{}: dependency loop: {}",
                    first.file.display(),
                    first.line,
                    cycle.join(" -> ")
                );
            }
        }
        Ok(())
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

fn syms_in(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Sym(s) => out.push(s.clone()),
        Expr::Const(_) => {}
        Expr::Not(x) => syms_in(x, out),
        Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| syms_in(x, out)),
        Expr::Cmp(_, a, b) => {
            syms_in(a, out);
            syms_in(b, out);
        }
    }
}

/// Tristate logic values: n = 0, y = 2 (m = 1 is never produced).
fn tri(v: &str) -> u8 {
    match v {
        "y" => 2,
        "m" => 1,
        _ => 0,
    }
}

struct Eval<'a> {
    tree: &'a Tree,
    vals: &'a HashMap<String, Option<String>>,
}

impl Eval<'_> {
    /// The string value of an operand.
    fn text(&self, e: &Expr) -> String {
        match e {
            Expr::Const(c) => c.clone(),
            Expr::Sym(s) => match self.tree.get(s) {
                Some(sym) => self.vals.get(s).cloned().flatten().unwrap_or_else(|| empty(sym.kind)),
                // An undefined name compares as its own text (as in Linux).
                None => s.clone(),
            },
            other => if self.t(other) == 2 { "y" } else { "n" }.into(),
        }
    }

    fn t(&self, e: &Expr) -> u8 {
        match e {
            Expr::Const(c) => tri(c),
            Expr::Sym(s) => match self.tree.get(s) {
                Some(sym) if sym.kind == Kind::Bool => tri(&self.text(e)),
                // Non-bool symbols are "y" in boolean context when they have a value.
                Some(_) => if self.vals.get(s).cloned().flatten().is_some() { 2 } else { 0 },
                None => 0,
            },
            Expr::Not(x) => 2 - self.t(x),
            Expr::And(v) => v.iter().map(|x| self.t(x)).min().unwrap_or(2),
            Expr::Or(v) => v.iter().map(|x| self.t(x)).max().unwrap_or(0),
            Expr::Cmp(op, a, b) => {
                let (x, y) = (self.text(a), self.text(b));
                let ord = match (num(&x), num(&y)) {
                    (Some(p), Some(q)) => p.cmp(&q),
                    _ => x.cmp(&y),
                };
                let r = match op {
                    CompareOperator::Equal => ord.is_eq(),
                    CompareOperator::NotEqual => ord.is_ne(),
                    CompareOperator::LowerThan => ord.is_lt(),
                    CompareOperator::LowerOrEqual => ord.is_le(),
                    CompareOperator::GreaterThan => ord.is_gt(),
                    CompareOperator::GreaterOrEqual => ord.is_ge(),
                };
                if r { 2 } else { 0 }
            }
        }
    }
}

fn empty(k: Kind) -> String {
    match k {
        Kind::Bool => "n".into(),
        _ => String::new(),
    }
}

/// Parses a decimal or 0x-prefixed number.
pub fn num(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Why a user value was rejected, or `None` when it is valid for the symbol.
pub fn invalid(kind: Kind, v: &str) -> Option<&'static str> {
    match kind {
        Kind::Bool if !matches!(v, "y" | "n" | "m") => Some("a bool takes y or n"),
        Kind::Int if v.parse::<i64>().is_err() => Some("an int takes a decimal number"),
        Kind::Hex if !v.starts_with("0x") || num(v).is_none() => Some("a hex takes a 0x-prefixed number"),
        _ => None,
    }
}

/// Resolves every symbol. `user` holds values set by the user (`.config`,
/// Kraftfile, `kiln config --set`), keyed by name without `CONFIG_`.
pub fn resolve(tree: &Tree, user: &BTreeMap<String, String>) -> Result<Values> {
    let mut vals: HashMap<String, Option<String>> = HashMap::new();
    // Who selects each symbol, and under which condition (computed once).
    let mut selectors: HashMap<&str, Vec<(&str, &Expr)>> = HashMap::new();
    for o in &tree.syms {
        for (t, c) in &o.selects {
            selectors.entry(t.as_str()).or_default().push((o.name.as_str(), c));
        }
    }
    let limit = tree.syms.len() * 2 + 10;
    for round in 0.. {
        let mut next = vals.clone();
        let ev = Eval { tree, vals: &vals };
        // Choice selections first: which visible member is on.
        let mut chosen: HashMap<usize, Option<String>> = HashMap::new();
        for (ci, c) in tree.choices.iter().enumerate() {
            let vis = |m: &String| {
                let s = tree.get(m).unwrap();
                ev.t(&s.deps) > 0 && s.prompt.as_ref().is_none_or(|(_, cond)| ev.t(cond) > 0)
            };
            let pick = if ev.t(&c.deps) == 0 {
                None
            } else {
                let by_user = c.members.iter().find(|m| user.get(*m).is_some_and(|v| v == "y") && vis(m));
                let by_default = c
                    .defaults
                    .iter()
                    .find(|(m, cond)| ev.t(cond) > 0 && c.members.contains(m) && vis(m))
                    .map(|(m, _)| m);
                by_user.or(by_default).or_else(|| c.members.iter().find(|m| vis(m))).cloned()
            };
            chosen.insert(ci, pick);
        }
        for s in &tree.syms {
            let dep = ev.t(&s.deps);
            let visible = dep > 0 && s.prompt.as_ref().is_some_and(|(_, c)| ev.t(c) > 0);
            let rev = selectors
                .get(s.name.as_str())
                .into_iter()
                .flatten()
                .map(|(o, c)| ev.t(&Expr::Sym(o.to_string())).min(ev.t(c)))
                .max()
                .unwrap_or(0);
            let v = match (s.kind, s.choice) {
                (Kind::Bool, Some(ci)) => {
                    let on = chosen[&ci].as_deref() == Some(s.name.as_str());
                    if dep == 0 && rev == 0 { None } else { Some(if on || rev > 0 { "y" } else { "n" }.to_string()) }
                }
                (Kind::Bool, None) => {
                    let mut t = match user.get(&s.name) {
                        Some(u) if visible => tri(u),
                        _ => s.defaults.iter().find(|(_, c)| ev.t(c) > 0).map_or(0, |(e, c)| ev.t(e).min(ev.t(c))),
                    };
                    t = t.min(dep);
                    t = t.max(rev);
                    let active_default = dep > 0 && s.defaults.iter().any(|(_, c)| ev.t(c) > 0);
                    if !visible && rev == 0 && !active_default {
                        // Not written to .config, like Linux does for unmet dependencies.
                        None
                    } else {
                        Some(if t > 0 { "y" } else { "n" }.into())
                    }
                }
                (kind, _) => {
                    if dep == 0 {
                        None
                    } else {
                        let range = s.ranges.iter().find(|(_, _, c)| ev.t(c) > 0).and_then(|(lo, hi, _)| {
                            Some((num(&ev.text(lo))?, num(&ev.text(hi))?))
                        });
                        let in_range = |v: &str| match (kind, range) {
                            (Kind::Int | Kind::Hex, Some((lo, hi))) => num(v).is_some_and(|n| n >= lo && n <= hi),
                            _ => true,
                        };
                        let from_user = user.get(&s.name).filter(|u| visible && invalid(kind, u).is_none() && in_range(u));
                        let v = match from_user {
                            Some(u) => u.clone(),
                            None => {
                                let d = s.defaults.iter().find(|(_, c)| ev.t(c) > 0).map(|(e, _)| ev.text(e));
                                let d = d.unwrap_or_else(|| match range {
                                    Some((lo, _)) if kind == Kind::Hex => format!("{lo:#x}"),
                                    Some((lo, _)) => lo.to_string(),
                                    None => String::new(),
                                });
                                // Defaults outside the range are clamped to it.
                                match (kind, range, num(&d)) {
                                    (Kind::Int, Some((lo, hi)), Some(n)) => n.clamp(lo, hi).to_string(),
                                    (Kind::Hex, Some((lo, hi)), Some(n)) => format!("{:#x}", n.clamp(lo, hi)),
                                    _ => d,
                                }
                            }
                        };
                        Some(v)
                    }
                }
            };
            next.insert(s.name.clone(), v);
        }
        if next == vals {
            break;
        }
        if round > limit {
            let changed: Vec<&String> = next.keys().filter(|k| next.get(*k) != vals.get(*k)).collect();
            bail!("Kconfig values do not settle (a dependency loop?) among: {changed:?}");
        }
        vals = next;
    }
    Ok(tree.syms.iter().map(|s| (s.name.clone(), vals.get(&s.name).cloned().flatten())).collect())
}

/// Writes a `.config` in the Linux format, symbols in tree order.
pub fn write_config(tree: &Tree, vals: &Values) -> String {
    let mut out = String::from("# Kiln configuration, resolved by `kiln`; edit with `kiln menu` or `kiln config`.\n");
    let mut menu = "";
    for s in &tree.syms {
        let Some(v) = vals.get(&s.name).cloned().flatten() else { continue };
        if s.menu != menu {
            menu = &s.menu;
            let _ = write!(out, "\n#\n# {menu}\n#\n");
        }
        let _ = match s.kind {
            Kind::Bool if v == "n" => writeln!(out, "# CONFIG_{} is not set", s.name),
            Kind::Str => writeln!(out, "CONFIG_{}=\"{}\"", s.name, v.replace('\\', "\\\\").replace('"', "\\\"")),
            _ => writeln!(out, "CONFIG_{}={v}", s.name),
        };
    }
    out
}

/// Reads a `.config`: `CONFIG_X=v` lines and `# CONFIG_X is not set`.
/// Returns values keyed by name without `CONFIG_`, with the line of each.
pub fn read_config(path: &Path, text: &str) -> Result<BTreeMap<String, (String, u64)>> {
    let mut out = BTreeMap::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        let line = i as u64 + 1;
        if let Some(rest) = l.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                out.insert(name.to_string(), ("n".to_string(), line));
            }
            continue;
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            bail!("{}:{line}: expected CONFIG_NAME=value, found '{l}'", path.display());
        };
        let Some(name) = k.strip_prefix("CONFIG_") else {
            bail!("{}:{line}: '{k}' does not start with CONFIG_", path.display());
        };
        let v = match v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            Some(s) => s.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => v.to_string(),
        };
        out.insert(name.to_string(), (v, line));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Tree {
        let d = std::env::temp_dir().join(format!("kiln-kconfig-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("Kconfig");
        std::fs::write(&p, text).unwrap();
        let mut t = Tree::default();
        t.add_file(&p, "Test").unwrap();
        t
    }

    fn values(t: &Tree, user: &[(&str, &str)]) -> BTreeMap<String, Option<String>> {
        let u = user.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(t, &u).unwrap()
    }

    fn v(vals: &Values, k: &str) -> Option<String> {
        vals.get(k).cloned().flatten()
    }

    const TREE: &str = r#"
config A
	bool "A"
	default y

config B
	bool "B"
	depends on A

config C
	bool
	select D if A

config D
	bool "D"

config N
	int "N"
	range 1 10
	default 20

config S
	string "S"
	default "hi" if B
	default "lo"

choice
	prompt "pick"
	default P2

config P1
	bool "p1"

config P2
	bool "p2"
	depends on B

endchoice

if A
config IN_IF
	def_bool y
endif

config CMP
	def_bool N >= 5 && S = "lo"
"#;

    #[test]
    fn defaults_deps_select_range_choice() {
        let t = tree(TREE);
        let x = values(&t, &[]);
        assert_eq!(v(&x, "A").as_deref(), Some("y"));
        assert_eq!(v(&x, "B").as_deref(), Some("n"));
        assert_eq!(v(&x, "N").as_deref(), Some("10"), "default clamped into range");
        assert_eq!(v(&x, "S").as_deref(), Some("lo"), "first active default wins");
        // P2 is the default but invisible (B=n), so the first visible member wins.
        assert_eq!(v(&x, "P1").as_deref(), Some("y"));
        assert_eq!(v(&x, "P2"), None, "member with unmet dependencies has no value");
        assert_eq!(v(&x, "IN_IF").as_deref(), Some("y"));
        assert_eq!(v(&x, "CMP").as_deref(), Some("y"));
        assert_eq!(v(&x, "D").as_deref(), Some("n"), "C is off, so D is not selected");

        let x = values(&t, &[("B", "y"), ("N", "3"), ("A", "y")]);
        assert_eq!(v(&x, "P2").as_deref(), Some("y"), "choice default once visible");
        assert_eq!(v(&x, "S").as_deref(), Some("hi"));
        assert_eq!(v(&x, "N").as_deref(), Some("3"));
        assert_eq!(v(&x, "CMP").as_deref(), Some("n"));

        let x = values(&t, &[("A", "n"), ("B", "y"), ("N", "99")]);
        assert_eq!(v(&x, "B"), None, "unmet dependency: no value at all");
        assert_eq!(v(&x, "IN_IF"), None);
        assert_eq!(v(&x, "N").as_deref(), Some("10"), "out-of-range user value dropped");
    }

    #[test]
    fn select_forces_a_value() {
        let t = tree("config A\n\tbool \"A\"\n\tselect B\nconfig B\n\tbool \"B\"\n\tdepends on X\nconfig X\n\tbool \"X\"\n");
        let x = values(&t, &[("A", "y")]);
        assert_eq!(v(&x, "B").as_deref(), Some("y"), "select overrides unmet dependencies, as in Linux");
        let x = values(&t, &[("A", "n"), ("X", "y"), ("B", "n")]);
        assert_eq!(v(&x, "B").as_deref(), Some("n"));
    }

    #[test]
    fn user_choice_and_config_round_trip() {
        let t = tree(TREE);
        let x = values(&t, &[("P1", "n"), ("B", "y"), ("P2", "y")]);
        assert_eq!(v(&x, "P2").as_deref(), Some("y"));
        let text = write_config(&t, &x);
        assert!(text.contains("CONFIG_P2=y\n") && text.contains("# CONFIG_P1 is not set\n"), "{text}");
        assert!(text.contains("CONFIG_S=\"hi\"\n"), "{text}");
        let back = read_config(Path::new(".config"), &text).unwrap();
        let user: BTreeMap<String, String> = back.into_iter().map(|(k, (v, _))| (k, v)).collect();
        assert_eq!(resolve(&t, &user).unwrap(), x);
    }

    #[test]
    fn errors_name_file_line_and_symbol() {
        let d = std::env::temp_dir().join(format!("kiln-kconfig-err-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("Kconfig");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            let mut t = Tree::default();
            t.add_file(&p, "T").and_then(|_| t.check()).map(|_| t)
        };
        let e = format!("{:#}", load("config A\n\tbool \"a\"\n\tselect NOPE\n").unwrap_err());
        assert_eq!(e, format!("{}:1: A selects undefined symbol NOPE", p.display()));
        let e = format!("{:#}", load("\nconfig A\n\tbool \"a\"\n\tdepends on B\nconfig B\n\tbool \"b\"\n\tdepends on A\n").unwrap_err());
        assert!(e.ends_with("dependency loop: A -> B -> A"), "{e}");
        assert!(e.starts_with(&format!("{}:2:", p.display())), "{e}");
        let e = format!("{:#}", load("config A\n\tbool \"a\"\n\nconfig\n").unwrap_err());
        assert!(e.contains("Kconfig syntax error"), "{e}");
    }

    #[test]
    fn read_config_errors() {
        let e = read_config(Path::new("x/.config"), "CONFIG_A=y\nnonsense\n").unwrap_err().to_string();
        assert_eq!(e, "x/.config:2: expected CONFIG_NAME=value, found 'nonsense'");
        assert_eq!(invalid(Kind::Int, "abc"), Some("an int takes a decimal number"));
        assert_eq!(invalid(Kind::Bool, "y"), None);
    }
}
