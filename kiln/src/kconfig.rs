//! Kconfig: the configuration language of Linux and Unikraft, as Kiln uses it.
//!
//! Kiln reads the files itself (`parse`, in one pass, linear in the input:
//! the crates on offer were slow on large trees or missed parts of the
//! language). This module holds the menu tree of nodes and the table of
//! symbols it builds, and evaluates values the way the
//! Linux kernel's kconfig does (checked against kconfiglib by the tests in
//! `kiln/tests/kconfiglib.rs`):
//!
//! - dependencies of menus, `if` blocks and choices are propagated to every
//!   property (prompt, default, select, imply, range) of what they contain;
//!   `visible if` limits only prompts;
//! - a symbol is visible when one of its prompts is; a user value counts only
//!   for a visible symbol and is limited by the visibility; otherwise the
//!   first default whose condition holds wins;
//! - `imply` raises a symbol whose own dependencies are met, `select` forces
//!   it regardless; `m` becomes `y` for bools and when modules are off;
//! - `int`/`hex` values outside the active `range` fall back to the default,
//!   which is clamped into the range;
//! - a `choice` in `y` mode selects the user's visible member, else the first
//!   visible default, else the first visible member.
//!
//! Values are computed lazily with memoisation, so the order of definitions
//! does not matter.

use anyhow::{anyhow, bail, Context, Result};
mod parse;
pub use parse::{MAX_NESTING, MAX_SOURCE_DEPTH};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A symbol's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unknown,
    Bool,
    Tristate,
    Int,
    Hex,
    Str,
}

impl Kind {
    pub fn is_tri(self) -> bool {
        matches!(self, Kind::Bool | Kind::Tristate)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Unknown => "unknown",
            Kind::Bool => "bool",
            Kind::Tristate => "tristate",
            Kind::Int => "int",
            Kind::Hex => "hex",
            Kind::Str => "string",
        }
    }
}

/// A comparison in an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareOperator {
    Equal,
    NotEqual,
    LowerThan,
    LowerOrEqual,
    GreaterThan,
    GreaterOrEqual,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A constant: `y`, `m`, `n`, a number or a quoted string.
    Const(String),
    /// A symbol by name (it may be undefined).
    Sym(String),
    /// The mode of a choice (the dependency its members inherit).
    Choice(usize),
    /// The modules symbol (`m` in a condition means `m && MODULES`).
    Modules,
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(CompareOperator, Box<Expr>, Box<Expr>),
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = |o: &CompareOperator| match o {
            CompareOperator::Equal => "=",
            CompareOperator::NotEqual => "!=",
            CompareOperator::LowerThan => "<",
            CompareOperator::LowerOrEqual => "<=",
            CompareOperator::GreaterThan => ">",
            CompareOperator::GreaterOrEqual => ">=",
        };
        let join = |f: &mut std::fmt::Formatter<'_>, v: &[Expr], sep: &str| -> std::fmt::Result {
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                match x {
                    Expr::And(_) | Expr::Or(_) => write!(f, "({x})")?,
                    _ => write!(f, "{x}")?,
                }
            }
            Ok(())
        };
        match self {
            Expr::Const(c) if matches!(c.as_str(), "y" | "n" | "m") || num(c).is_some() => {
                write!(f, "{c}")
            }
            Expr::Const(c) => write!(f, "{c:?}"),
            Expr::Sym(s) => write!(f, "{s}"),
            Expr::Choice(_) => write!(f, "<choice>"),
            Expr::Modules => write!(f, "MODULES"),
            Expr::Not(x) => match **x {
                Expr::And(_) | Expr::Or(_) | Expr::Cmp(..) => write!(f, "!({x})"),
                _ => write!(f, "!{x}"),
            },
            Expr::And(v) => join(f, v, "&&"),
            Expr::Or(v) => join(f, v, "||"),
            Expr::Cmp(o, a, b) => write!(f, "{a} {} {b}", op(o)),
        }
    }
}

fn yes() -> Expr {
    Expr::Const("y".into())
}

fn no() -> Expr {
    Expr::Const("n".into())
}

fn is_const(e: &Expr, v: &str) -> bool {
    matches!(e, Expr::Const(c) if c == v)
}

fn and(a: &Expr, b: Expr) -> Expr {
    if is_const(a, "y") {
        return b;
    }
    if is_const(&b, "y") {
        return a.clone();
    }
    Expr::And(vec![a.clone(), b])
}

fn or(a: &Expr, b: Expr) -> Expr {
    if is_const(a, "n") {
        return b;
    }
    Expr::Or(vec![a.clone(), b])
}

/// What a menu node shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Sym(usize),
    Choice(usize),
    Menu,
    Comment,
    /// An `if` block; removed from the tree once its condition is propagated.
    If,
}

/// One entry of the menu tree, with its properties after dependency
/// propagation (each condition already includes the node's dependencies).
#[derive(Clone, Debug)]
pub struct Node {
    pub item: Item,
    pub prompt: Option<(String, Expr)>,
    pub dep: Expr,
    /// `visible if` of a menu.
    pub visible: Expr,
    pub defaults: Vec<(Expr, Expr)>,
    pub ranges: Vec<(Expr, Expr, Expr)>,
    pub selects: Vec<(String, Expr)>,
    pub implies: Vec<(String, Expr)>,
    pub help: String,
    pub menuconfig: bool,
    pub children: Vec<usize>,
    pub parent: Option<usize>,
    pub file: PathBuf,
    pub line: u64,
}

/// A `config` symbol: the union of all its definitions.
#[derive(Clone, Debug)]
pub struct Sym {
    pub name: String,
    pub kind: Kind,
    pub nodes: Vec<usize>,
    pub defaults: Vec<(Expr, Expr)>,
    pub ranges: Vec<(Expr, Expr, Expr)>,
    pub selects: Vec<(String, Expr)>,
    pub implies: Vec<(String, Expr)>,
    pub direct_dep: Expr,
    /// Who selects this symbol, and when (`select` from that symbol).
    pub rev: Vec<(String, Expr)>,
    /// Who implies this symbol, and when.
    pub weak_rev: Vec<(String, Expr)>,
    pub choice: Option<usize>,
    pub help: String,
    pub file: PathBuf,
    pub line: u64,
    /// Set by `option env` or `option defconfig_list`: never written.
    pub auto: bool,
}

/// A `choice` group.
#[derive(Clone, Debug)]
pub struct Choice {
    pub kind: Kind,
    pub nodes: Vec<usize>,
    pub defaults: Vec<(String, Expr)>,
    pub direct_dep: Expr,
    pub optional: bool,
    pub members: Vec<usize>,
}

/// A loaded Kconfig tree. Node 0 is the top menu.
#[derive(Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub syms: Vec<Sym>,
    pub choices: Vec<Choice>,
    pub mainmenu: String,
    index: HashMap<String, usize>,
    modules: Option<usize>,
    modules_name: Option<String>,
}

/// Resolved values: `None` means the symbol is not written (no value).
pub type Values = BTreeMap<String, Option<String>>;

/// User values by symbol name (without `CONFIG_`).
pub type User = BTreeMap<String, String>;

/// An empty menu node.
fn blank(item: Item, file: &Path, line: u64) -> Node {
    Node {
        item,
        prompt: None,
        dep: yes(),
        visible: yes(),
        defaults: vec![],
        ranges: vec![],
        selects: vec![],
        implies: vec![],
        help: String::new(),
        menuconfig: false,
        children: vec![],
        parent: None,
        file: file.to_path_buf(),
        line,
    }
}

impl Tree {
    /// Loads a Kconfig tree from its top file. `source` paths are relative to
    /// `root`; `$(VAR)` in them comes from `vars`.
    pub fn load(
        top: &Path,
        text: &str,
        root: &Path,
        vars: &HashMap<String, String>,
    ) -> Result<Tree> {
        Tree::load_with_shell(top, text, root, vars, false)
    }

    /// [`Tree::load`], with `$(shell,...)` running its command when
    /// `run_shell` (for trees that probe the host as Linux's does).
    pub fn load_with_shell(
        top: &Path,
        text: &str,
        root: &Path,
        vars: &HashMap<String, String>,
        run_shell: bool,
    ) -> Result<Tree> {
        let mut t = Tree {
            nodes: Vec::new(),
            syms: Vec::new(),
            choices: Vec::new(),
            mainmenu: String::new(),
            index: HashMap::new(),
            modules: None,
            modules_name: None,
        };
        let mut top_node = blank(Item::Menu, top, 1);
        top_node.prompt = Some(("Kiln Configuration".into(), yes()));
        t.nodes.push(top_node);
        parse::Parser::new(&mut t, root, vars)
            .run_shell(run_shell)
            .file(top, text, 0)?;
        if !t.mainmenu.is_empty() {
            t.nodes[0].prompt = Some((t.mainmenu.clone(), yes()));
        }
        t.modules = t
            .modules_name
            .clone()
            .or(Some("MODULES".into()))
            .and_then(|n| t.index.get(&n).copied());
        t.finalize(0, &yes());
        for si in 0..t.syms.len() {
            for (target, cond) in t.syms[si].selects.clone() {
                let me = Expr::Sym(t.syms[si].name.clone());
                if let Some(&ti) = t.index.get(&target) {
                    let name = t.syms[si].name.clone();
                    t.syms[ti].rev.push((name, and(&me, cond)));
                }
            }
            for (target, cond) in t.syms[si].implies.clone() {
                let me = Expr::Sym(t.syms[si].name.clone());
                if let Some(&ti) = t.index.get(&target) {
                    let name = t.syms[si].name.clone();
                    t.syms[ti].weak_rev.push((name, and(&me, cond)));
                }
            }
        }
        // Choice members without a type take the choice's, and the reverse.
        for ci in 0..t.choices.len() {
            if t.choices[ci].kind == Kind::Unknown {
                t.choices[ci].kind = t.choices[ci]
                    .members
                    .iter()
                    .map(|&m| t.syms[m].kind)
                    .find(|k| *k != Kind::Unknown)
                    .unwrap_or(Kind::Unknown);
            }
            for m in t.choices[ci].members.clone() {
                if t.syms[m].kind == Kind::Unknown {
                    t.syms[m].kind = t.choices[ci].kind;
                }
            }
        }
        Ok(t)
    }

    /// Loads a Kconfig file from disk, with sources relative to its folder.
    pub fn load_file(path: &Path) -> Result<Tree> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Tree::load(
            path,
            &text,
            path.parent().unwrap_or(Path::new(".")),
            &std::env::vars().collect(),
        )
    }

    fn push(&mut self, parent: usize, node: Node) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            parent: Some(parent),
            ..node
        });
        self.nodes[parent].children.push(i);
        i
    }

    /// The symbol `name`, made (untyped, defined at `file:line`) the
    /// first time it is named.
    fn symbol(&mut self, name: &str, file: &Path, line: u64) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.index.insert(name.into(), self.syms.len());
        self.syms.push(Sym {
            name: name.into(),
            kind: Kind::Unknown,
            nodes: vec![],
            defaults: vec![],
            ranges: vec![],
            selects: vec![],
            implies: vec![],
            direct_dep: no(),
            rev: vec![],
            weak_rev: vec![],
            choice: None,
            help: String::new(),
            file: file.to_path_buf(),
            line,
            auto: false,
        });
        self.syms.len() - 1
    }

    /// Propagates dependencies down the tree, as Linux's menu_finalize
    /// does, and finalizes the top node's children.
    fn finalize(&mut self, n: usize, visible_if: &Expr) {
        self.finalize_at(&[n], 0, visible_if);
    }

    /// Finalizes `kids[i]` (one of a parent's children, in order): its
    /// properties go to its symbol or choice, its own children are
    /// finalized, and a symbol takes the siblings that follow it and depend
    /// on it as its children (an implicit menu: this decides, among other
    /// things, which symbols of a choice are its members). `if` blocks and
    /// promptless nodes give their children to their parent. Returns the
    /// index of the next sibling still to finalize.
    fn finalize_at(&mut self, kids: &[usize], i: usize, visible_if: &Expr) -> usize {
        let n = kids[i];
        let mut next = i + 1;
        match self.nodes[n].item {
            Item::Sym(si) => {
                self.add_props(si, n);
                let mut implicit = Vec::new();
                while next < kids.len() && self.menu_dep(kids[next], si) {
                    let k = kids[next];
                    next = self.finalize_at(kids, next, visible_if);
                    self.nodes[k].parent = Some(n);
                    implicit.push(k);
                }
                self.nodes[n].children = implicit;
            }
            _ if !self.nodes[n].children.is_empty() => {
                let vis = if self.nodes[n].item == Item::Menu {
                    and(visible_if, self.nodes[n].visible.clone())
                } else {
                    visible_if.clone()
                };
                self.propagate(n, &vis);
                let children = self.nodes[n].children.clone();
                let mut kept = Vec::new();
                let mut j = 0;
                while j < children.len() {
                    kept.push(children[j]);
                    j = self.finalize_at(&children, j, &vis);
                }
                self.nodes[n].children = kept;
            }
            _ => {}
        }
        if !self.nodes[n].children.is_empty() {
            // Children left with nothing to show move up a level (as
            // kconfiglib's menu tree has them); `if` nodes vanish.
            let mut flat = Vec::new();
            self.flatten(n, &mut flat);
            for &c in &flat {
                self.nodes[c].parent = Some(n);
                let node = &mut self.nodes[c];
                if node.prompt.is_none() && !matches!(node.item, Item::Choice(_)) {
                    // Its children were moved up beside it.
                    node.children.clear();
                }
            }
            self.nodes[n].children = flat;
        }
        if let Item::Choice(ci) = self.nodes[n].item {
            let node = &self.nodes[n];
            let dd = or(&self.choices[ci].direct_dep, node.dep.clone());
            let defaults: Vec<(String, Expr)> = node
                .defaults
                .iter()
                .filter_map(|(d, c)| {
                    if let Expr::Sym(s) = d {
                        Some((s.clone(), c.clone()))
                    } else {
                        None
                    }
                })
                .collect();
            let members: Vec<usize> = node
                .children
                .iter()
                .filter_map(|&c| {
                    if let Item::Sym(s) = self.nodes[c].item {
                        Some(s)
                    } else {
                        None
                    }
                })
                .collect();
            let ch = &mut self.choices[ci];
            ch.direct_dep = dd;
            ch.defaults.extend(defaults);
            for m in members {
                if !ch.members.contains(&m) {
                    ch.members.push(m);
                }
                self.syms[m].choice = Some(ci);
            }
        }
        next
    }

    /// Whether node `c` depends on symbol `si` the way that puts it in the
    /// symbol's implicit menu: `si`, `si = y`, `si = m` or `si != n` as a
    /// term of a top-level `&&` in its prompt's condition (or, without a
    /// prompt, in its dependencies).
    fn menu_dep(&self, c: usize, si: usize) -> bool {
        let node = &self.nodes[c];
        let e = node.prompt.as_ref().map_or(&node.dep, |p| &p.1);
        let name = &self.syms[si].name;
        fn on(e: &Expr, name: &str) -> bool {
            let is = |x: &Expr| matches!(x, Expr::Sym(s) if s == name);
            match e {
                Expr::Sym(s) => s == name,
                Expr::And(v) => v.iter().any(|x| on(x, name)),
                Expr::Cmp(op, a, b) => {
                    let other = if is(a) {
                        b
                    } else if is(b) {
                        a
                    } else {
                        return false;
                    };
                    match op {
                        CompareOperator::Equal => is_const(other, "y") || is_const(other, "m"),
                        CompareOperator::NotEqual => is_const(other, "n"),
                        _ => false,
                    }
                }
                _ => false,
            }
        }
        on(e, name)
    }

    /// The children of `n` with those of its `if` and promptless children
    /// (not choices) put in their place, recursively.
    fn flatten(&self, n: usize, out: &mut Vec<usize>) {
        for &c in &self.nodes[n].children {
            let node = &self.nodes[c];
            let hoist = !node.children.is_empty()
                && node.prompt.is_none()
                && !matches!(node.item, Item::Choice(_));
            if node.item != Item::If {
                out.push(c);
            }
            if node.item == Item::If || hoist {
                self.flatten(c, out);
            }
        }
    }

    fn propagate(&mut self, n: usize, visible_if: &Expr) {
        let base = match self.nodes[n].item {
            Item::Choice(ci) => Expr::Choice(ci),
            _ => self.nodes[n].dep.clone(),
        };
        for c in self.nodes[n].children.clone() {
            let node = &mut self.nodes[c];
            let dep = and(&node.dep, base.clone());
            node.dep = dep.clone();
            match node.item {
                Item::Sym(_) | Item::Choice(_) => {
                    if let Some((p, cond)) = node.prompt.take() {
                        node.prompt = Some((p, and(&cond, and(visible_if, dep.clone()))));
                    }
                    for (_, cond) in &mut node.defaults {
                        *cond = and(cond, dep.clone());
                    }
                    for (_, _, cond) in &mut node.ranges {
                        *cond = and(cond, dep.clone());
                    }
                    for (_, cond) in node.selects.iter_mut().chain(node.implies.iter_mut()) {
                        *cond = and(cond, dep.clone());
                    }
                }
                _ => {
                    if let Some((p, cond)) = node.prompt.take() {
                        node.prompt = Some((p, and(&cond, dep)));
                    }
                }
            }
        }
    }

    fn add_props(&mut self, si: usize, n: usize) {
        let node = self.nodes[n].clone();
        let s = &mut self.syms[si];
        s.direct_dep = or(&s.direct_dep, node.dep);
        s.defaults.extend(node.defaults);
        s.ranges.extend(node.ranges);
        s.selects.extend(node.selects);
        s.implies.extend(node.implies);
    }

    /// Looks a symbol up by name (without `CONFIG_`).
    pub fn get(&self, name: &str) -> Option<&Sym> {
        self.index.get(name).map(|&i| &self.syms[i])
    }

    pub fn sym_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Problems with the tree: undefined symbols that are selected or
    /// depended on, untyped symbols, and dependency loops (named).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let at = |s: &Sym| format!("{}:{}", s.file.display(), s.line);
        for s in &self.syms {
            if s.kind == Kind::Unknown {
                out.push(format!(
                    "{}: symbol {} has no type (bool, tristate, int, hex, string)",
                    at(s),
                    s.name
                ));
            }
            let sel = s.selects.iter().map(|(t, _)| ("selects", t));
            for (verb, t) in sel.chain(s.implies.iter().map(|(t, _)| ("implies", t))) {
                match self.get(t) {
                    None => out.push(format!("{}: {} {verb} undefined symbol {t}", at(s), s.name)),
                    Some(target) if !target.kind.is_tri() => out.push(format!(
                        "{}: {} {verb} {t}, which is not a bool or tristate",
                        at(s),
                        s.name
                    )),
                    _ => {}
                }
            }
            let mut refs = Vec::new();
            syms_in(&s.direct_dep, &mut refs);
            for r in refs {
                if self.get(&r).is_none() && num(&r).is_none() {
                    out.push(format!(
                        "{}: {} depends on undefined symbol {r}",
                        at(s),
                        s.name
                    ));
                }
            }
        }
        out.extend(self.dependency_loop());
        out
    }

    /// Fails on the first problem.
    pub fn check(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            Some(p) => Err(anyhow!(p)),
            None => Ok(()),
        }
    }

    /// A dependency loop, as "file:line: dependency loop: A -> B -> A".
    pub fn dependency_loop(&self) -> Option<String> {
        let cycle = self.find_loop()?;
        let first = self.get(&cycle[0])?;
        Some(format!(
            "{}:{}: dependency loop: {}",
            first.file.display(),
            first.line,
            cycle.join(" -> ")
        ))
    }

    /// A loop among dependencies, as kconfiglib finds them. A symbol's
    /// value depends on the symbols (and choices) in its dependencies,
    /// prompt conditions, defaults (values and conditions), ranges, and on
    /// whoever selects or implies it (and when). A choice depends on the
    /// conditions of its prompts and defaults and on its members; a member
    /// depends on its choice, but a member, its choice and that member
    /// again are no loop. The loop is given from a symbol. Graph nodes are
    /// the symbols, then the choices.
    fn find_loop(&self) -> Option<Vec<String>> {
        let ns = self.syms.len();
        let total = ns + self.choices.len();
        // Edges: (node, whether it is a member's tie to its choice).
        let mut edges: Vec<Vec<(usize, bool)>> = vec![Vec::new(); total];
        for (i, s) in self.syms.iter().enumerate() {
            let mut exprs: Vec<&Expr> = vec![&s.direct_dep];
            exprs.extend(s.rev.iter().chain(&s.weak_rev).map(|(_, e)| e));
            exprs.extend(s.defaults.iter().flat_map(|(v, c)| [v, c]));
            exprs.extend(s.ranges.iter().flat_map(|(lo, hi, c)| [lo, hi, c]));
            exprs.extend(
                s.nodes
                    .iter()
                    .filter_map(|&n| self.nodes[n].prompt.as_ref().map(|p| &p.1)),
            );
            edges[i] = self
                .graph_refs(&exprs)
                .into_iter()
                .map(|r| (r, false))
                .collect();
            edges[i].extend(s.choice.map(|c| (ns + c, true)));
        }
        for (ci, c) in self.choices.iter().enumerate() {
            let mut exprs: Vec<&Expr> = c.defaults.iter().map(|(_, cond)| cond).collect();
            exprs.extend(
                c.nodes
                    .iter()
                    .filter_map(|&n| self.nodes[n].prompt.as_ref().map(|p| &p.1)),
            );
            let mut e: Vec<(usize, bool)> = self
                .graph_refs(&exprs)
                .into_iter()
                .map(|r| (r, false))
                .collect();
            e.extend(c.members.iter().map(|&m| (m, true)));
            edges[ns + ci] = e;
        }
        let name = |n: usize| {
            if n < ns {
                self.syms[n].name.clone()
            } else {
                String::from("<choice>")
            }
        };
        // Iterative DFS (Linux-sized trees are too deep for recursion); a
        // frame is (node, next edge, where a tie led here from).
        let mut state = vec![0u8; total];
        for start in 0..ns {
            if state[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize, Option<usize>)> = vec![(start, 0, None)];
            state[start] = 1;
            while let Some(&mut (n, ref mut next, skip)) = stack.last_mut() {
                let Some(&(m, tie)) = edges[n].get(*next) else {
                    state[n] = 2;
                    stack.pop();
                    continue;
                };
                *next += 1;
                if tie && Some(m) == skip {
                    continue;
                }
                match state[m] {
                    0 => {
                        state[m] = 1;
                        // From a member to its choice or back: the same
                        // tie straight back is no loop.
                        stack.push((m, 0, tie.then_some(n)));
                    }
                    1 => {
                        let from = stack.iter().position(|f| f.0 == m).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|f| f.0).collect();
                        // Start (and end) at a symbol.
                        let first = cycle.iter().position(|&x| x < ns).unwrap_or(0);
                        cycle.rotate_left(first);
                        cycle.push(cycle[0]);
                        return Some(cycle.into_iter().map(name).collect());
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// The symbols `exprs` mention. (A choice in a condition is no edge:
    /// a member's tie to its choice is, both ways.)
    fn graph_refs(&self, exprs: &[&Expr]) -> Vec<usize> {
        fn walk(t: &Tree, e: &Expr, out: &mut Vec<usize>) {
            match e {
                Expr::Sym(s) => out.extend(t.sym_index(s)),
                Expr::Choice(_) | Expr::Const(_) | Expr::Modules => {}
                Expr::Not(x) => walk(t, x, out),
                Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| walk(t, x, out)),
                Expr::Cmp(_, a, b) => {
                    walk(t, a, out);
                    walk(t, b, out);
                }
            }
        }
        let mut out = Vec::new();
        for e in exprs {
            walk(self, e, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The symbols an expression mentions.
pub fn syms_of(e: &Expr) -> Vec<String> {
    let mut v = Vec::new();
    syms_in(e, &mut v);
    v.dedup();
    v
}

fn syms_in(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Sym(s) => out.push(s.clone()),
        Expr::Const(_) | Expr::Choice(_) | Expr::Modules => {}
        Expr::Not(x) => syms_in(x, out),
        Expr::And(v) | Expr::Or(v) => v.iter().for_each(|x| syms_in(x, out)),
        Expr::Cmp(_, a, b) => {
            syms_in(a, out);
            syms_in(b, out);
        }
    }
}

fn tri(v: &str) -> u8 {
    match v {
        "y" => 2,
        "m" => 1,
        _ => 0,
    }
}

const TRI: [&str; 3] = ["n", "m", "y"];

/// Parses an integer like Python's `int(s, base)` (base 0: by prefix).
pub fn parse_int(s: &str, base: u32) -> Option<i128> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = s.to_ascii_lowercase();
    let (digits, radix) = match base {
        16 => (lower.strip_prefix("0x").unwrap_or(&lower).to_string(), 16),
        0 => {
            if let Some(h) = lower.strip_prefix("0x") {
                (h.to_string(), 16)
            } else if let Some(o) = lower.strip_prefix("0o") {
                (o.to_string(), 8)
            } else if let Some(b) = lower.strip_prefix("0b") {
                (b.to_string(), 2)
            } else if lower.len() > 1 && lower.starts_with('0') && lower.chars().any(|c| c != '0') {
                return None;
            } else {
                (lower.clone(), 10)
            }
        }
        b => (lower.clone(), b),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(&digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

/// Parses a decimal or 0x-prefixed number.
pub fn num(s: &str) -> Option<i64> {
    parse_int(s, 0).and_then(|v| i64::try_from(v).ok())
}

/// Why a user value was rejected, or `None` when it is valid for the symbol.
pub fn invalid(kind: Kind, v: &str) -> Option<&'static str> {
    match kind {
        Kind::Bool if !matches!(v, "y" | "n") => Some("a bool takes y or n"),
        Kind::Tristate if !matches!(v, "y" | "m" | "n") => Some("a tristate takes y, m or n"),
        Kind::Int if parse_int(v, 10).is_none() => Some("an int takes a decimal number"),
        Kind::Hex if !v.starts_with("0x") || parse_int(v, 16).is_none_or(|n| n < 0) => {
            Some("a hex takes a 0x-prefixed number")
        }
        _ => None,
    }
}

fn base(k: Kind) -> u32 {
    match k {
        Kind::Int => 10,
        Kind::Hex => 16,
        _ => 0,
    }
}

fn py_hex(n: i128) -> String {
    if n < 0 {
        format!("-{:#x}", -n)
    } else {
        format!("{n:#x}")
    }
}

/// Evaluates a tree under one set of user values. Everything is computed on
/// demand and cached; a value caught in a loop evaluates as `n`/empty.
pub struct Eval<'a> {
    pub tree: &'a Tree,
    user_tri: Vec<Option<u8>>,
    user_str: Vec<Option<String>>,
    choice_user: Vec<Option<u8>>,
    choice_sel: Vec<Option<usize>>,
    tri_cache: RefCell<Vec<Option<u8>>>,
    str_cache: RefCell<Vec<Option<(String, bool)>>>,
    vis_cache: RefCell<Vec<Option<u8>>>,
    ctri_cache: RefCell<Vec<Option<u8>>>,
    busy: RefCell<Vec<u8>>,
}

impl<'a> Eval<'a> {
    /// User values that are malformed for their symbol's type are ignored,
    /// as when Linux loads a `.config`.
    pub fn new(tree: &'a Tree, user: &User) -> Eval<'a> {
        let n = tree.syms.len();
        let mut user_tri = vec![None; n];
        let mut user_str = vec![None; n];
        let mut choice_user = vec![None; tree.choices.len()];
        let mut choice_sel = vec![None; tree.choices.len()];
        for (name, v) in user {
            let Some(i) = tree.sym_index(name) else {
                continue;
            };
            let s = &tree.syms[i];
            match s.kind {
                Kind::Bool | Kind::Tristate => {
                    let ok = if s.kind == Kind::Bool {
                        matches!(v.as_str(), "y" | "n")
                    } else {
                        matches!(v.as_str(), "y" | "m" | "n")
                    };
                    if !ok {
                        continue;
                    }
                    let t = tri(v);
                    user_tri[i] = Some(t);
                    if let Some(c) = s.choice {
                        if t > 0 {
                            choice_user[c] = Some(choice_user[c].unwrap_or(0).max(t));
                        }
                        if t == 2 {
                            choice_sel[c] = Some(i);
                        }
                    }
                }
                Kind::Int | Kind::Hex => {
                    if parse_int(v, base(s.kind)).is_some_and(|x| s.kind == Kind::Int || x >= 0) {
                        user_str[i] = Some(v.clone());
                    }
                }
                Kind::Str => user_str[i] = Some(v.clone()),
                Kind::Unknown => {}
            }
        }
        Eval {
            tree,
            user_tri,
            user_str,
            choice_user,
            choice_sel,
            tri_cache: RefCell::new(vec![None; n]),
            str_cache: RefCell::new(vec![None; n]),
            vis_cache: RefCell::new(vec![None; n]),
            ctri_cache: RefCell::new(vec![None; tree.choices.len()]),
            busy: RefCell::new(vec![0; n]),
        }
    }

    fn guard<T>(&self, i: usize, bit: u8, dflt: T, f: impl FnOnce() -> T) -> T {
        if self.busy.borrow()[i] & bit != 0 {
            return dflt;
        }
        self.busy.borrow_mut()[i] |= bit;
        let v = f();
        self.busy.borrow_mut()[i] &= !bit;
        v
    }

    fn modules(&self) -> u8 {
        self.tree.modules.map_or(0, |m| self.tri(m))
    }

    /// The effective type: a tristate is a bool when modules are off or in
    /// a `y`-mode choice.
    pub fn kind(&self, i: usize) -> Kind {
        let s = &self.tree.syms[i];
        if s.kind == Kind::Tristate
            && (s.choice.is_some_and(|c| self.choice_tri(c) == 2) || self.modules() == 0)
        {
            return Kind::Bool;
        }
        s.kind
    }

    pub fn choice_kind(&self, c: usize) -> Kind {
        let k = self.tree.choices[c].kind;
        if k == Kind::Tristate && self.modules() == 0 {
            Kind::Bool
        } else {
            k
        }
    }

    fn prompt_vis(&self, nodes: &[usize]) -> u8 {
        nodes
            .iter()
            .filter_map(|&n| self.tree.nodes[n].prompt.as_ref())
            .map(|(_, c)| self.t(c))
            .max()
            .unwrap_or(0)
    }

    /// How far the user can set a symbol (0, 1 = m, 2 = y).
    pub fn visibility(&self, i: usize) -> u8 {
        if let Some(v) = self.vis_cache.borrow()[i] {
            return v;
        }
        let v = self.guard(i, 1, 0, || {
            let s = &self.tree.syms[i];
            let vis = self.prompt_vis(&s.nodes);
            if let Some(c) = s.choice {
                let ct = self.choice_tri(c);
                if self.tree.choices[c].kind == Kind::Tristate
                    && s.kind != Kind::Tristate
                    && ct != 2
                {
                    return 0;
                }
                if s.kind == Kind::Tristate && vis == 1 && ct == 2 {
                    return 0;
                }
            }
            if vis == 1 && self.kind(i) != Kind::Tristate {
                2
            } else {
                vis
            }
        });
        self.vis_cache.borrow_mut()[i] = Some(v);
        v
    }

    pub fn choice_visibility(&self, c: usize) -> u8 {
        let vis = self.prompt_vis(&self.tree.choices[c].nodes);
        if vis == 1 && self.choice_kind(c) != Kind::Tristate {
            2
        } else {
            vis
        }
    }

    /// The mode of a choice.
    pub fn choice_tri(&self, c: usize) -> u8 {
        if let Some(v) = self.ctri_cache.borrow()[c] {
            return v;
        }
        let ch = &self.tree.choices[c];
        let mut v = if ch.optional { 0 } else { 1 };
        if let Some(u) = self.choice_user[c] {
            v = v.max(u);
        }
        v = v.min(self.choice_visibility(c));
        if v == 1 && self.choice_kind(c) == Kind::Bool {
            v = 2;
        }
        self.ctri_cache.borrow_mut()[c] = Some(v);
        v
    }

    /// The member a `y`-mode choice has selected.
    pub fn selection(&self, c: usize) -> Option<usize> {
        if self.choice_tri(c) != 2 {
            return None;
        }
        if let Some(u) = self.choice_sel[c].filter(|&u| self.visibility(u) > 0) {
            return Some(u);
        }
        self.default_selection(c)
    }

    fn default_selection(&self, c: usize) -> Option<usize> {
        let ch = &self.tree.choices[c];
        for (name, cond) in &ch.defaults {
            if let Some(i) = self.tree.sym_index(name) {
                if self.t(cond) > 0 && self.visibility(i) > 0 {
                    return Some(i);
                }
            }
        }
        ch.members.iter().copied().find(|&m| self.visibility(m) > 0)
    }

    fn or_value(&self, list: &[(String, Expr)]) -> u8 {
        list.iter().map(|(_, e)| self.t(e)).max().unwrap_or(0)
    }

    /// Value of `select`s on the symbol.
    pub fn rev_dep(&self, i: usize) -> u8 {
        self.or_value(&self.tree.syms[i].rev)
    }

    /// Value of `imply`s on the symbol.
    pub fn weak_rev_dep(&self, i: usize) -> u8 {
        self.or_value(&self.tree.syms[i].weak_rev)
    }

    /// Symbols whose `select` currently forces this one.
    pub fn selected_by(&self, i: usize) -> Vec<String> {
        self.tree.syms[i]
            .rev
            .iter()
            .filter(|(_, e)| self.t(e) > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The tristate value of a bool or tristate symbol (0 for other types).
    pub fn tri(&self, i: usize) -> u8 {
        if let Some(v) = self.tri_cache.borrow()[i] {
            return v;
        }
        let v = self.guard(i, 2, 0, || self.compute_tri(i).0);
        self.tri_cache.borrow_mut()[i] = Some(v);
        v
    }

    /// The value and whether it goes into `.config`.
    fn compute_tri(&self, i: usize) -> (u8, bool) {
        let s = &self.tree.syms[i];
        if !s.kind.is_tri() {
            return (0, false);
        }
        let vis = self.visibility(i);
        let mut write = vis != 0;
        let mut val = 0;
        match s.choice {
            None => {
                match self.user_tri[i] {
                    Some(u) if vis > 0 => val = u.min(vis),
                    _ => {
                        if let Some((d, c)) = s.defaults.iter().find(|(_, c)| self.t(c) > 0) {
                            val = self.t(d).min(self.t(c));
                            if val > 0 {
                                write = true;
                            }
                        }
                        let w = self.weak_rev_dep(i);
                        if w > 0 && self.t(&s.direct_dep) > 0 {
                            val = val.max(w);
                            write = true;
                        }
                    }
                }
                let r = self.rev_dep(i);
                if r > 0 {
                    val = val.max(r);
                    write = true;
                }
                if val == 1 && (self.kind(i) == Kind::Bool || self.weak_rev_dep(i) == 2) {
                    val = 2;
                }
            }
            Some(c) => {
                if vis == 2 {
                    val = if self.selection(c) == Some(i) { 2 } else { 0 };
                } else if vis > 0 && self.user_tri[i].unwrap_or(0) > 0 {
                    val = 1;
                }
            }
        }
        (val, write)
    }

    /// The string value and whether the symbol is written to `.config`.
    pub fn value(&self, i: usize) -> (String, bool) {
        if let Some(v) = self.str_cache.borrow()[i].clone() {
            return v;
        }
        let mut v = self.guard(i, 4, (String::new(), false), || self.compute_str(i));
        // Values from the environment (`option env`) and the defconfig
        // list are not configuration: never written, as in Linux.
        v.1 &= !self.tree.syms[i].auto;
        self.str_cache.borrow_mut()[i] = Some(v.clone());
        v
    }

    fn compute_str(&self, i: usize) -> (String, bool) {
        let s = &self.tree.syms[i];
        match s.kind {
            Kind::Unknown => return (s.name.clone(), false),
            Kind::Bool | Kind::Tristate => {
                let (_, write) = self.compute_tri(i);
                return (TRI[self.tri(i) as usize].to_string(), write);
            }
            _ => {}
        }
        let vis = self.visibility(i);
        let mut write = vis != 0;
        let mut val = String::new();
        if matches!(s.kind, Kind::Int | Kind::Hex) {
            let b = base(s.kind);
            let range = s
                .ranges
                .iter()
                .find(|(_, _, c)| self.t(c) > 0)
                .map(|(lo, hi, _)| {
                    let n = |e: &Expr| parse_int(&self.text(e), b).unwrap_or(0);
                    (n(lo), n(hi))
                });
            let mut use_defaults = true;
            if let Some(u) = self.user_str[i]
                .as_ref()
                .filter(|u| vis > 0 && !u.is_empty())
            {
                let n = parse_int(u, b).unwrap_or(0);
                if range.is_none_or(|(lo, hi)| lo <= n && n <= hi) {
                    val = u.clone();
                    use_defaults = false;
                }
            }
            if use_defaults {
                let mut n = 0;
                if let Some((d, _)) = s.defaults.iter().find(|(_, c)| self.t(c) > 0) {
                    write = true;
                    val = self.text(d);
                    n = parse_int(&val, b).unwrap_or(0);
                }
                if let Some((lo, hi)) = range {
                    let clamp = if n < lo {
                        Some(lo)
                    } else if n > hi {
                        Some(hi)
                    } else {
                        None
                    };
                    if let Some(c) = clamp {
                        val = if s.kind == Kind::Int {
                            c.to_string()
                        } else {
                            py_hex(c)
                        };
                    }
                }
            }
        } else {
            match self.user_str[i].as_ref().filter(|_| vis > 0) {
                Some(u) => val = u.clone(),
                None => {
                    if let Some((d, _)) = s.defaults.iter().find(|(_, c)| self.t(c) > 0) {
                        val = self.text(d);
                        write = true;
                    }
                }
            }
        }
        (val, write)
    }

    /// The value a symbol would have without a user value (for savedefconfig).
    fn default_str(&self, i: usize) -> String {
        let s = &self.tree.syms[i];
        if s.kind.is_tri() {
            let mut v = 0;
            if s.choice.is_none() {
                if let Some((d, c)) = s.defaults.iter().find(|(_, c)| self.t(c) > 0) {
                    v = self.t(d).min(self.t(c));
                }
                v = v.max(self.rev_dep(i)).max(self.weak_rev_dep(i));
                if v == 1 && self.kind(i) == Kind::Bool {
                    v = 2;
                }
            }
            return TRI[v as usize].into();
        }
        if matches!(s.kind, Kind::Int | Kind::Hex | Kind::Str) {
            if let Some((d, _)) = s.defaults.iter().find(|(_, c)| self.t(c) > 0) {
                return self.text(d);
            }
        }
        String::new()
    }

    /// The text of an operand: a constant's own text, a symbol's value, an
    /// undefined symbol's name.
    fn text(&self, e: &Expr) -> String {
        match e {
            Expr::Const(c) => c.clone(),
            Expr::Sym(s) => match self.tree.sym_index(s) {
                Some(i) => self.value(i).0,
                None => s.clone(),
            },
            other => TRI[self.t(other) as usize].into(),
        }
    }

    fn operand_kind(&self, e: &Expr) -> Kind {
        match e {
            Expr::Const(c) if matches!(c.as_str(), "y" | "m" | "n") => Kind::Tristate,
            Expr::Sym(s) => self.tree.get(s).map_or(Kind::Unknown, |s| s.kind),
            Expr::Const(_) => Kind::Unknown,
            _ => Kind::Tristate,
        }
    }

    fn to_num(&self, e: &Expr) -> Option<i128> {
        let k = self.operand_kind(e);
        if k.is_tri() {
            return Some(self.t(e) as i128);
        }
        parse_int(&self.text(e), base(k))
    }

    /// The tristate value of an expression.
    pub fn t(&self, e: &Expr) -> u8 {
        match e {
            Expr::Const(c) => tri(c),
            Expr::Sym(s) => self.tree.sym_index(s).map_or(0, |i| self.tri(i)),
            Expr::Choice(c) => self.choice_tri(*c),
            Expr::Modules => self.modules(),
            Expr::Not(x) => 2 - self.t(x),
            Expr::And(v) => {
                let mut m = 2;
                for x in v {
                    m = m.min(self.t(x));
                    if m == 0 {
                        break;
                    }
                }
                m
            }
            Expr::Or(v) => {
                let mut m = 0;
                for x in v {
                    m = m.max(self.t(x));
                    if m == 2 {
                        break;
                    }
                }
                m
            }
            Expr::Cmp(op, a, b) => {
                let ord = if self.operand_kind(a) == Kind::Str && self.operand_kind(b) == Kind::Str
                {
                    self.text(a).cmp(&self.text(b))
                } else {
                    match (self.to_num(a), self.to_num(b)) {
                        (Some(x), Some(y)) => x.cmp(&y),
                        _ => self.text(a).cmp(&self.text(b)),
                    }
                };
                let r = match op {
                    CompareOperator::Equal => ord.is_eq(),
                    CompareOperator::NotEqual => ord.is_ne(),
                    CompareOperator::LowerThan => ord.is_lt(),
                    CompareOperator::LowerOrEqual => ord.is_le(),
                    CompareOperator::GreaterThan => ord.is_gt(),
                    CompareOperator::GreaterOrEqual => ord.is_ge(),
                };
                if r {
                    2
                } else {
                    0
                }
            }
        }
    }

    /// Whether a menu node is shown (its prompt's condition holds).
    pub fn node_visible(&self, n: usize) -> bool {
        let node = &self.tree.nodes[n];
        match node.item {
            Item::Sym(i) => {
                node.prompt.as_ref().is_some_and(|(_, c)| self.t(c) > 0) && (self.visibility(i) > 0)
            }
            Item::Choice(_) => node.prompt.as_ref().is_some_and(|(_, c)| self.t(c) > 0),
            Item::Menu => self.t(&node.dep) > 0 && self.t(&node.visible) > 0,
            Item::Comment => self.t(&node.dep) > 0,
            Item::If => false,
        }
    }

    /// The `.config` line of a symbol, if it is written.
    pub fn config_line(&self, i: usize) -> Option<String> {
        let s = &self.tree.syms[i];
        let (v, write) = self.value(i);
        if !write {
            return None;
        }
        Some(match s.kind {
            Kind::Bool | Kind::Tristate if v == "n" => format!("# CONFIG_{} is not set\n", s.name),
            Kind::Str => format!(
                "CONFIG_{}=\"{}\"\n",
                s.name,
                v.replace('\\', "\\\\").replace('"', "\\\"")
            ),
            _ => format!("CONFIG_{}={v}\n", s.name),
        })
    }

    /// All values, `None` for symbols that are not written.
    pub fn values(&self) -> Values {
        self.tree
            .syms
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (v, w) = self.value(i);
                (s.name.clone(), w.then_some(v))
            })
            .collect()
    }

    /// The `.config` text in the Linux format: symbols in menu order, with
    /// a comment block for each visible menu and comment.
    pub fn config_text(&self, header: &str) -> String {
        let mut out = String::from(header);
        let mut seen = vec![false; self.tree.syms.len()];
        let mut after_end = false;
        self.write_node(0, &mut out, &mut seen, &mut after_end);
        out
    }

    fn write_node(&self, n: usize, out: &mut String, seen: &mut [bool], after_end: &mut bool) {
        for &c in &self.tree.nodes[n].children {
            let node = &self.tree.nodes[c];
            match node.item {
                Item::Sym(i) => {
                    if !seen[i] {
                        seen[i] = true;
                        if let Some(l) = self.config_line(i) {
                            if *after_end {
                                *after_end = false;
                                out.push('\n');
                            }
                            out.push_str(&l);
                        }
                    }
                }
                Item::Menu | Item::Comment if self.node_visible(c) => {
                    let _ = write!(
                        out,
                        "\n#\n# {}\n#\n",
                        node.prompt.as_ref().map_or("", |p| p.0.as_str())
                    );
                    *after_end = false;
                }
                _ => {}
            }
            if !node.children.is_empty() {
                self.write_node(c, out, seen, after_end);
                if node.item == Item::Menu && self.node_visible(c) {
                    let _ = writeln!(
                        out,
                        "# end of {}",
                        node.prompt.as_ref().map_or("", |p| p.0.as_str())
                    );
                    *after_end = true;
                }
            }
        }
    }

    /// The minimal `.config` (savedefconfig): only values that differ from
    /// what the defaults would give.
    pub fn min_config_text(&self, header: &str) -> String {
        let mut out = String::from(header);
        for (i, s) in self.tree.syms.iter().enumerate() {
            if s.choice.is_none() && self.visibility(i) <= self.rev_dep(i) {
                continue;
            }
            if self.value(i).0 == self.default_str(i) {
                continue;
            }
            if let Some(c) = s.choice {
                let ch = &self.tree.choices[c];
                if !ch.optional
                    && self.default_selection(c) == Some(i)
                    && s.kind == Kind::Bool
                    && self.tri(i) == 2
                {
                    continue;
                }
            }
            if let Some(l) = self.config_line(i) {
                out.push_str(&l);
            }
        }
        out
    }
}

/// Resolves every symbol.
pub fn resolve(tree: &Tree, user: &User) -> Values {
    Eval::new(tree, user).values()
}

/// The header Kiln puts at the top of `.config` files.
pub const HEADER: &str =
    "# Kiln configuration, resolved by `kiln`; edit with `kiln menu` or `kiln config`.\n";

/// Writes a `.config` in the Linux format.
pub fn write_config(tree: &Tree, user: &User) -> String {
    Eval::new(tree, user).config_text(HEADER)
}

/// Reads a `.config`: `CONFIG_X=v` lines and `# CONFIG_X is not set`.
/// Returns values keyed by name without `CONFIG_`, with the line of each.
/// A `.config`'s values (from [`read_config`]) as user values. When
/// several members of one choice are `y`, the one latest in the file is
/// the selection, as in kconfiglib (the others become `n`).
pub fn user_from_config(tree: &Tree, values: BTreeMap<String, (String, u64)>) -> User {
    let mut in_order: Vec<(String, String, u64)> =
        values.into_iter().map(|(k, (v, l))| (k, v, l)).collect();
    in_order.sort_by_key(|e| e.2);
    let mut user = User::new();
    for (k, v, _) in in_order {
        if v == "y" {
            if let Some(c) = tree.get(&k).and_then(|s| s.choice) {
                for &m in &tree.choices[c].members {
                    user.insert(tree.syms[m].name.clone(), "n".into());
                }
            }
        }
        user.insert(k, v);
    }
    user
}

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
            bail!(
                "{}:{line}: expected CONFIG_NAME=value, found '{l}'",
                path.display()
            );
        };
        let Some(name) = k.strip_prefix("CONFIG_") else {
            bail!(
                "{}:{line}: '{k}' does not start with CONFIG_",
                path.display()
            );
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
        let d = std::env::temp_dir().join(format!(
            "kiln-kconfig-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("Kconfig");
        std::fs::write(&p, text).unwrap();
        Tree::load_file(&p).unwrap()
    }

    fn values(t: &Tree, user: &[(&str, &str)]) -> BTreeMap<String, Option<String>> {
        let u = user
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(t, &u)
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
        assert_eq!(
            v(&x, "N").as_deref(),
            Some("10"),
            "default clamped into range"
        );
        assert_eq!(
            v(&x, "S").as_deref(),
            Some("lo"),
            "first active default wins"
        );
        // P2 is the default but invisible (B=n), so the first visible member wins.
        assert_eq!(v(&x, "P1").as_deref(), Some("y"));
        assert_eq!(
            v(&x, "P2"),
            None,
            "member with unmet dependencies has no value"
        );
        assert_eq!(v(&x, "IN_IF").as_deref(), Some("y"));
        assert_eq!(v(&x, "CMP").as_deref(), Some("y"));
        assert_eq!(
            v(&x, "D").as_deref(),
            Some("n"),
            "C is off, so D is not selected"
        );

        let x = values(&t, &[("B", "y"), ("N", "3"), ("A", "y")]);
        assert_eq!(
            v(&x, "P2").as_deref(),
            Some("y"),
            "choice default once visible"
        );
        assert_eq!(v(&x, "S").as_deref(), Some("hi"));
        assert_eq!(v(&x, "N").as_deref(), Some("3"));
        assert_eq!(
            v(&x, "CMP"),
            None,
            "a def_bool that evaluates to n and has no prompt is not written"
        );

        let x = values(&t, &[("A", "n"), ("B", "y"), ("N", "99")]);
        assert_eq!(v(&x, "B"), None, "unmet dependency: no value at all");
        assert_eq!(v(&x, "IN_IF"), None);
        assert_eq!(
            v(&x, "N").as_deref(),
            Some("10"),
            "out-of-range user value dropped"
        );
    }

    #[test]
    fn select_forces_a_value() {
        let t = tree("config A\n\tbool \"A\"\n\tselect B\nconfig B\n\tbool \"B\"\n\tdepends on X\nconfig X\n\tbool \"X\"\n");
        let x = values(&t, &[("A", "y")]);
        assert_eq!(
            v(&x, "B").as_deref(),
            Some("y"),
            "select overrides unmet dependencies, as in Linux"
        );
        let x = values(&t, &[("A", "n"), ("X", "y"), ("B", "n")]);
        assert_eq!(v(&x, "B").as_deref(), Some("n"));
    }

    #[test]
    fn user_choice_and_config_round_trip() {
        let t = tree(TREE);
        let x = values(&t, &[("P1", "n"), ("B", "y"), ("P2", "y")]);
        assert_eq!(v(&x, "P2").as_deref(), Some("y"));
        let u: User = [("P1", "n"), ("B", "y"), ("P2", "y")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = write_config(&t, &u);
        assert!(
            text.contains("CONFIG_P2=y\n") && text.contains("# CONFIG_P1 is not set\n"),
            "{text}"
        );
        assert!(text.contains("CONFIG_S=\"hi\"\n"), "{text}");
        let back = read_config(Path::new(".config"), &text).unwrap();
        let user: BTreeMap<String, String> = back.into_iter().map(|(k, (v, _))| (k, v)).collect();
        assert_eq!(resolve(&t, &user), x);
        // Two members of one choice set to y: the later line wins, whatever
        // the names' order.
        for (text, want) in [
            ("CONFIG_B=y\nCONFIG_P2=y\nCONFIG_P1=y\n", "P1"),
            ("CONFIG_B=y\nCONFIG_P1=y\nCONFIG_P2=y\n", "P2"),
        ] {
            let user = user_from_config(&t, read_config(Path::new(".config"), text).unwrap());
            let x = resolve(&t, &user);
            assert_eq!(v(&x, want).as_deref(), Some("y"), "{text}");
        }
    }

    /// Where a test writes its Kconfig file: a scratch folder of its own.
    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-kconfig-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("Kconfig")
    }

    #[test]
    fn unterminated_strings_are_errors_not_crashes() {
        let p = scratch("quote");
        let d = p.parent().unwrap();
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Tree::load_file(&p)
        };
        // Found by fuzzing: the parser underflowed on this line.
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\nconfig S\n\tstring \"Gre\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!("{}:4: string without its closing quote", p.display())
        );
        // Quotes in help texts and comments are text, not strings.
        let t = load("config A\n\tbool \"a\" # it's\n\thelp\n\t  Don't \"quote\n\n\t  me.\nconfig B\n\tbool \"b\"\n").unwrap();
        assert!(t.get("B").is_some());
        // In a sourced file (this one once made a parser panic).
        std::fs::write(
            d.join("Kconfig.sub"),
            include_bytes!("../../fuzz/regressions/kconfig/unterminated-string"),
        )
        .unwrap();
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\nsource \"Kconfig.sub\"\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!(
                "{}:2: string without its closing quote",
                d.join("Kconfig.sub").display()
            )
        );
    }

    #[test]
    fn undefined_variables_expand_to_nothing() {
        let p = scratch("undef");
        std::fs::write(
            &p,
            "config S\n\tstring \"s\"\n\tdefault \"x$(KILN_SURELY_UNDEFINED)y\"\n",
        )
        .unwrap();
        let t = Tree::load_file(&p).unwrap();
        let x = resolve(&t, &User::new());
        assert_eq!(v(&x, "S").as_deref(), Some("xy"));
    }

    #[test]
    fn relative_and_optional_sources() {
        let p = scratch("rsource");
        let d = p.parent().unwrap();
        std::fs::create_dir_all(d.join("sub/inner")).unwrap();
        std::fs::write(
            d.join("sub/Kconfig"),
            "config B\n\tbool \"b\"\n\tdefault y\nrsource \"inner/Kconfig\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("sub/inner/Kconfig"),
            "config C\n\tbool \"c\"\n\tdefault y\n",
        )
        .unwrap();
        std::fs::write(&p, "config A\n\tbool \"a\"\nrsource \"sub/Kconfig\"\nosource \"missing/Kconfig\"\norsource \"gone/Kconfig\"\n").unwrap();
        let t = Tree::load_file(&p).unwrap();
        for name in ["A", "B", "C"] {
            assert!(t.get(name).is_some(), "{name}");
        }
        // rsource loops are found as source loops are.
        std::fs::write(
            d.join("sub/inner/Kconfig"),
            "config C\n\tbool \"c\"\nrsource \"../Kconfig\"\n",
        )
        .unwrap();
        let e = format!("{:#}", Tree::load_file(&p).unwrap_err());
        assert!(
            e.contains("inner/Kconfig:3: `rsource \"../Kconfig\"` makes a loop"),
            "{e}"
        );
    }

    #[test]
    fn source_loops_and_deep_nesting_are_errors_not_stack_overflows() {
        let p = scratch("loops");
        let d = p.parent().unwrap();
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Tree::load_file(&p)
        };
        // A file that sources itself.
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\nsource \"Kconfig\"\n").unwrap_err()
        );
        assert!(
            e.starts_with(&format!(
                "{}:3: `source \"Kconfig\"` makes a loop",
                p.display()
            )),
            "{e}"
        );
        // Two files that source each other.
        std::fs::write(
            d.join("Kconfig.b"),
            "config B\n\tbool \"b\"\nsource \"Kconfig\"\n",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\nsource \"Kconfig.b\"\n").unwrap_err()
        );
        assert!(
            e.contains("Kconfig.b:3: `source \"Kconfig\"` makes a loop")
                && e.contains("Kconfig:3 -> "),
            "{e}"
        );
        // The same file sourced twice side by side is no loop.
        std::fs::write(d.join("Kconfig.c"), "config C\n\tbool \"c\"\n").unwrap();
        assert!(load("menu \"m\"\nsource \"Kconfig.c\"\nendmenu\n").is_ok());
        // 1,250 nested parentheses, and as many `!`.
        let deep = format!(
            "config A\n\tbool \"a\"\n\tdepends on {}B{}\nconfig B\n\tbool \"b\"\n",
            "(".repeat(1250),
            ")".repeat(1250)
        );
        let e = format!("{:#}", load(&deep).unwrap_err());
        assert!(
            e.starts_with(&format!(
                "{}:3: Kconfig syntax error: parentheses nested more than {MAX_NESTING} deep",
                p.display()
            )),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load(&format!(
                "config A\n\tbool \"a\"\n\tdepends on {}A\n",
                "!".repeat(1250)
            ))
            .unwrap_err()
        );
        assert!(
            e.contains(":3: Kconfig syntax error: parentheses nested"),
            "{e}"
        );
        // As deep as allowed is fine, on this test's 2 MiB thread.
        let ok = format!(
            "config A\n\tbool \"a\"\n\tdepends on {}B{}\nconfig B\n\tbool \"b\"\n",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(load(&ok).is_ok());
        // A chain of sourced files as deep as allowed, then one more.
        let n = MAX_SOURCE_DEPTH;
        for i in 1..n {
            std::fs::write(
                d.join(format!("K{i}")),
                format!("config S{i}\n\tbool \"s\"\nsource \"K{}\"\n", i + 1),
            )
            .unwrap();
        }
        std::fs::write(d.join(format!("K{n}")), "config LAST\n\tbool \"last\"\n").unwrap();
        let t = load("source \"K2\"\n").unwrap();
        assert!(t.get("LAST").is_some());
        let e = format!("{:#}", load("source \"K1\"\n").unwrap_err());
        assert!(
            e.contains(&format!(
                "K{}:3: `source` nested more than {n} files deep",
                n - 1
            )),
            "{e}"
        );
    }

    #[test]
    fn macros_run_and_their_errors_name_the_line() {
        let p = scratch("macros");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Tree::load_file(&p)
        };
        let t = load("f = <$(1)|$(2)>\nV := $(f,a,b)\nconfig S\n\tstring \"s\"\n\tdefault \"$(V)$(lineno)\"\n").unwrap();
        assert_eq!(
            v(&resolve(&t, &User::new()), "S").as_deref(),
            Some("<a|b>5")
        );
        // Parentheses inside a call nest, with their commas.
        let t = load("f = [$(1)][$(2)]\nconfig S\n\tstring \"s\"\n\tdefault \"$(f,g(x, y),z)\"\n")
            .unwrap();
        assert_eq!(
            v(&resolve(&t, &User::new()), "S").as_deref(),
            Some("[g(x, y)][z]")
        );
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\n$(error-if,y,this tree needs a newer Kiln)\n")
                .unwrap_err()
        );
        assert_eq!(
            e,
            format!("{}:3: this tree needs a newer Kiln", p.display())
        );
        let e = format!(
            "{:#}",
            load("X = a$(X)\nconfig A\n\tstring \"a\"\n\tdefault \"$(X)\"\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!(
                "{}:4: preprocessor variable X refers to itself",
                p.display()
            )
        );
        let e = format!("{:#}", load("f = $(f,x)\nY := $(f,y)\n").unwrap_err());
        assert!(
            e.ends_with("preprocessor function f calls itself more than 100 deep"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\n\tfrobnicate\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!(
                "{}:3: 'frobnicate' is neither a Kconfig keyword nor an assignment",
                p.display()
            )
        );
        let e = format!(
            "{:#}",
            load("menu \"m\"\nconfig A\n\tbool \"a\"\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!("{}: the file ends before its 'endmenu'", p.display())
        );
    }

    #[test]
    fn absolute_and_wildcard_sources() {
        let p = scratch("globs");
        let d = p.parent().unwrap();
        for sub in ["b", "a"] {
            std::fs::create_dir_all(d.join("drivers").join(sub)).unwrap();
            std::fs::write(
                d.join("drivers").join(sub).join("Kconfig"),
                format!("config DRV_{}\n\tbool \"{sub}\"\n", sub.to_uppercase()),
            )
            .unwrap();
        }
        // A file outside the source root, by its absolute path.
        let outside =
            std::env::temp_dir().join(format!("kiln-kconfig-outside-{}", std::process::id()));
        std::fs::write(&outside, "config OUTSIDE\n\tbool \"o\"\n").unwrap();
        std::fs::write(
            &p,
            format!(
                "source \"drivers/*/Kconfig\"\nsource \"{}\"\n",
                outside.display()
            ),
        )
        .unwrap();
        let t = Tree::load_file(&p).unwrap();
        let names: Vec<&str> = t.syms.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["DRV_A", "DRV_B", "OUTSIDE"]);
        let _ = std::fs::remove_file(outside);
    }

    #[test]
    fn dependency_loops_through_every_kind_of_edge() {
        let p = scratch("deploops");
        let found = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Tree::load_file(&p).unwrap().dependency_loop()
        };
        let cases = [
            (
                "config A\n\tbool \"a\"\n\tdepends on B\nconfig B\n\tbool \"b\"\n\tdepends on A\n",
                "A -> B -> A",
            ),
            ("config A\n\tbool \"a\"\n\tdepends on A\n", "A -> A"),
            (
                "config A\n\tbool \"a\"\n\tdepends on B\n\tselect B\nconfig B\n\tbool \"b\"\n",
                "A -> B -> A",
            ),
            (
                "config A\n\tbool\n\tdefault B\nconfig B\n\tbool\n\tdefault A\n",
                "A -> B -> A",
            ),
            (
                "config A\n\tint \"a\"\n\trange 0 B\nconfig B\n\tint\n\tdefault A\n",
                "A -> B -> A",
            ),
            (
                "config A\n\tbool \"a\" if B\nconfig B\n\tbool\n\tdefault y if A\n",
                "A -> B -> A",
            ),
        ];
        for (text, want) in cases {
            let l = found(text).unwrap_or_else(|| panic!("no loop found in:\n{text}"));
            assert!(
                l.ends_with(&format!("dependency loop: {want}"))
                    && l.starts_with(&format!("{}:1:", p.display())),
                "{l}"
            );
        }
        assert_eq!(found("config A\n\tbool \"a\"\nconfig B\n\tbool \"b\"\n\tdepends on A\n\tselect C\nconfig C\n\tbool\n\tdefault A\n"), None);
    }

    #[test]
    fn errors_name_file_line_and_symbol() {
        let p = scratch("err");
        let d = p.parent().unwrap();
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Tree::load_file(&p).and_then(|t| t.check().map(|_| t))
        };
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\n\tselect NOPE\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!("{}:1: A selects undefined symbol NOPE", p.display())
        );
        let e = format!("{:#}", load("\nconfig A\n\tbool \"a\"\n\tdepends on B\nconfig B\n\tbool \"b\"\n\tdepends on A\n").unwrap_err());
        assert!(e.ends_with("dependency loop: A -> B -> A"), "{e}");
        assert!(e.starts_with(&format!("{}:2:", p.display())), "{e}");
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\n\nconfig\n").unwrap_err()
        );
        assert!(e.contains("Kconfig syntax error"), "{e}");
        // Errors inside a sourced file name that file.
        std::fs::write(
            d.join("Kconfig.sub"),
            "config B\n\tbool \"b\"\n\tdepends on\n",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\nsource \"Kconfig.sub\"\n").unwrap_err()
        );
        assert!(
            e.contains(&format!("{}", d.join("Kconfig.sub").display()))
                && e.contains("syntax error"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\n\nsource \"missing/Kconfig\"\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!(
                "{}:4: sourced file {} not found",
                p.display(),
                d.join("missing/Kconfig").display()
            )
        );
        let e = format!(
            "{:#}",
            load("config A\n\tbool \"a\"\n\timply NOPE\n").unwrap_err()
        );
        assert_eq!(
            e,
            format!("{}:1: A implies undefined symbol NOPE", p.display())
        );
    }

    #[test]
    fn read_config_errors() {
        let e = read_config(Path::new("x/.config"), "CONFIG_A=y\nnonsense\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x/.config:2: expected CONFIG_NAME=value, found 'nonsense'"
        );
        assert_eq!(
            invalid(Kind::Int, "abc"),
            Some("an int takes a decimal number")
        );
        assert_eq!(invalid(Kind::Bool, "y"), None);
    }
}
