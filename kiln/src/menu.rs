//! `kiln menu`: a full-screen configuration menu, like `make menuconfig`.
//!
//! The state machine ([`Menu`]) is separate from the terminal: it takes key
//! presses and draws into any ratatui backend, so tests drive it with
//! ratatui's `TestBackend` as well as through a real terminal (tmux).

use crate::kconfig::{self, Eval, Item, Kind, Tree, User};
use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;
use std::path::PathBuf;

/// One row of the current view.
#[derive(Clone, Debug, PartialEq)]
enum Row {
    /// A menu node of the current menu.
    Node(usize),
    /// A member of the choice being shown (symbol index).
    Member(usize),
    /// A search result (symbol index).
    Found(usize),
}

/// What takes the keyboard.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Browse,
    /// Editing the value of an int, hex or string symbol.
    Edit {
        sym: usize,
        text: String,
    },
    /// Typing a search query.
    Search {
        text: String,
    },
    /// Showing help for a symbol.
    Help {
        sym: Option<usize>,
        node: usize,
        scroll: u16,
    },
    /// Asked to quit with unsaved changes.
    ConfirmQuit,
}

/// A place in the menu tree: a menu node, a choice node, or search results.
#[derive(Clone, Debug, PartialEq)]
enum View {
    Menu(usize),
    Choice(usize),
    Results(String),
}

pub struct Menu {
    tree: Tree,
    user: User,
    saved_user: User,
    path: PathBuf,
    stack: Vec<(View, usize)>,
    view: View,
    list: ListState,
    mode: Mode,
    message: String,
    pub done: bool,
}

fn tri_box(v: &str, forced: bool, tristate: bool) -> String {
    let c = match v {
        "y" => "*",
        "m" => "M",
        _ => " ",
    };
    match (forced, tristate) {
        (true, false) => format!("-{c}-"),
        (true, true) => format!("{{{c}}}"),
        (false, false) => format!("[{c}]"),
        (false, true) => format!("<{c}>"),
    }
}

impl Menu {
    pub fn new(tree: Tree, user: User, path: PathBuf) -> Menu {
        let mut list = ListState::default();
        list.select(Some(0));
        Menu {
            tree,
            saved_user: user.clone(),
            user,
            path,
            stack: Vec::new(),
            view: View::Menu(0),
            list,
            mode: Mode::Browse,
            message: String::new(),
            done: false,
        }
    }

    fn eval(&self) -> Eval<'_> {
        Eval::new(&self.tree, &self.user)
    }

    fn prompt(&self, n: usize) -> String {
        self.tree.nodes[n]
            .prompt
            .as_ref()
            .map_or(String::new(), |p| p.0.clone())
    }

    /// The rows of the current view.
    fn rows(&self) -> Vec<Row> {
        let ev = self.eval();
        match &self.view {
            View::Menu(m) => {
                // A symbol's implicit menu (what follows it and depends on
                // it, such as an `if` block after it) is shown right below it.
                fn add(tree: &kconfig::Tree, ev: &Eval<'_>, n: usize, out: &mut Vec<Row>) {
                    for &c in &tree.nodes[n].children {
                        if ev.node_visible(c) {
                            out.push(Row::Node(c));
                            if matches!(tree.nodes[c].item, Item::Sym(_)) {
                                add(tree, ev, c, out);
                            }
                        }
                    }
                }
                let mut rows = Vec::new();
                add(&self.tree, &ev, *m, &mut rows);
                rows
            }
            View::Choice(n) => {
                let Item::Choice(ci) = self.tree.nodes[*n].item else {
                    return vec![];
                };
                self.tree.choices[ci]
                    .members
                    .iter()
                    .copied()
                    .filter(|&m| ev.visibility(m) > 0)
                    .map(Row::Member)
                    .collect()
            }
            View::Results(q) => {
                let q = q.to_lowercase();
                (0..self.tree.syms.len())
                    .filter(|&i| {
                        let s = &self.tree.syms[i];
                        s.name.to_lowercase().contains(&q)
                            || s.nodes
                                .iter()
                                .any(|&n| self.prompt(n).to_lowercase().contains(&q))
                    })
                    .map(Row::Found)
                    .collect()
            }
        }
    }

    /// The text of one row.
    fn row_text(&self, ev: &Eval, row: &Row) -> String {
        match row {
            Row::Node(n) => {
                let node = &self.tree.nodes[*n];
                let p = self.prompt(*n);
                match node.item {
                    Item::Sym(i) => self.sym_text(ev, i, &p),
                    Item::Choice(ci) => {
                        let sel = ev
                            .selection(ci)
                            .map(|s| self.sym_prompt(s))
                            .unwrap_or_default();
                        format!("    {p} ({sel})  --->")
                    }
                    Item::Menu => format!("    {p}  --->"),
                    Item::Comment => format!("    *** {p} ***"),
                    Item::If => String::new(),
                }
            }
            Row::Member(i) => {
                let on = ev.tri(*i) == 2;
                format!("({}) {}", if on { "X" } else { " " }, self.sym_prompt(*i))
            }
            Row::Found(i) => {
                let s = &self.tree.syms[*i];
                let (v, _) = ev.value(*i);
                let shown = if ev.visibility(*i) > 0 {
                    ""
                } else {
                    "  [not visible]"
                };
                format!("{:<28} = {:<10} {}{shown}", s.name, v, self.sym_prompt(*i))
            }
        }
    }

    fn sym_prompt(&self, i: usize) -> String {
        self.tree.syms[i]
            .nodes
            .iter()
            .map(|&n| self.prompt(n))
            .find(|p| !p.is_empty())
            .unwrap_or_else(|| self.tree.syms[i].name.clone())
    }

    fn sym_text(&self, ev: &Eval, i: usize, prompt: &str) -> String {
        let s = &self.tree.syms[i];
        let (v, _) = ev.value(i);
        let menu = if self.tree.nodes[s.nodes[0]].menuconfig {
            ""
        } else {
            ""
        };
        match s.kind {
            Kind::Bool | Kind::Tristate => {
                let forced = ev.rev_dep(i) > 0 && ev.rev_dep(i) >= ev.visibility(i);
                format!(
                    "{} {prompt}{menu}",
                    tri_box(&v, forced, ev.kind(i) == Kind::Tristate)
                )
            }
            _ => format!("({v}) {prompt}"),
        }
    }

    fn selected_row(&self) -> Option<Row> {
        let rows = self.rows();
        self.list.selected().and_then(|i| rows.get(i).cloned())
    }

    fn row_sym(&self, row: &Row) -> Option<usize> {
        match row {
            Row::Node(n) => match self.tree.nodes[*n].item {
                Item::Sym(i) => Some(i),
                _ => None,
            },
            Row::Member(i) | Row::Found(i) => Some(*i),
        }
    }

    fn changed(&self) -> bool {
        kconfig::write_config(&self.tree, &self.user)
            != kconfig::write_config(&self.tree, &self.saved_user)
    }

    fn set(&mut self, i: usize, v: &str) {
        let s = &self.tree.syms[i];
        if let (Some(c), "y") = (s.choice, v) {
            for &m in &self.tree.choices[c].members {
                self.user.insert(self.tree.syms[m].name.clone(), "n".into());
            }
        }
        self.user.insert(s.name.clone(), v.into());
    }

    /// Toggles a bool (or cycles a tristate) if the user may change it.
    fn toggle(&mut self, i: usize, to: Option<&str>) {
        let ev = self.eval();
        let vis = ev.visibility(i);
        let rev = ev.rev_dep(i);
        let kind = ev.kind(i);
        let cur = ev.value(i).0;
        let by = ev.selected_by(i);
        drop(ev);
        let s = &self.tree.syms[i];
        if !s.kind.is_tri() {
            return;
        }
        if vis == 0 {
            self.message = format!("{} cannot be changed: its dependencies are not met", s.name);
            return;
        }
        let next = match to {
            Some(t) => t.to_string(),
            None if kind == Kind::Tristate => match cur.as_str() {
                "n" => "m",
                "m" if vis == 2 => "y",
                _ => "n",
            }
            .into(),
            None => if cur == "y" { "n" } else { "y" }.into(),
        };
        if next == "m" && kind != Kind::Tristate {
            self.message = format!("{} is a bool: y or n", s.name);
            return;
        }
        if rev == 2 && next != "y" || rev == 1 && next == "n" {
            self.message = format!("{} is forced by select from {}", s.name, by.join(", "));
            return;
        }
        let name = s.name.clone();
        self.set(i, &next);
        self.message = format!("{name} = {next}");
    }

    fn enter(&mut self) {
        let Some(row) = self.selected_row() else {
            return;
        };
        match row {
            Row::Node(n) => match self.tree.nodes[n].item {
                Item::Menu => self.push(View::Menu(n)),
                Item::Choice(_) => self.push(View::Choice(n)),
                Item::Sym(i) => match self.tree.syms[i].kind {
                    Kind::Int | Kind::Hex | Kind::Str => {
                        let text = self.eval().value(i).0;
                        self.mode = Mode::Edit { sym: i, text };
                    }
                    _ => self.toggle(i, None),
                },
                _ => {}
            },
            Row::Member(i) => {
                self.toggle(i, Some("y"));
                self.back();
            }
            Row::Found(i) => self.jump_to(i),
        }
    }

    fn push(&mut self, v: View) {
        let at = self.list.selected().unwrap_or(0);
        self.stack.push((std::mem::replace(&mut self.view, v), at));
        self.list.select(Some(0));
    }

    fn back(&mut self) {
        match self.stack.pop() {
            Some((v, at)) => {
                self.view = v;
                self.list.select(Some(at));
            }
            None => self.quit(),
        }
    }

    /// Shows a symbol where it lives in the menu tree.
    fn jump_to(&mut self, i: usize) {
        let ev = self.eval();
        let node = self.tree.syms[i]
            .nodes
            .iter()
            .copied()
            .find(|&n| ev.node_visible(n));
        drop(ev);
        let Some(node) = node else {
            self.mode = Mode::Help {
                sym: Some(i),
                node: self.tree.syms[i].nodes[0],
                scroll: 0,
            };
            return;
        };
        // The chain of menus (and choices) from the top down to the node.
        let mut chain = Vec::new();
        let mut cur = self.tree.nodes[node].parent;
        while let Some(p) = cur {
            // A symbol's implicit menu is shown inside its own menu.
            if !matches!(self.tree.nodes[p].item, Item::Sym(_)) {
                chain.push(p);
            }
            cur = self.tree.nodes[p].parent;
        }
        chain.reverse();
        self.stack.clear();
        self.view = View::Menu(0);
        for &p in chain.iter().skip(1) {
            let v = if matches!(self.tree.nodes[p].item, Item::Choice(_)) {
                View::Choice(p)
            } else {
                View::Menu(p)
            };
            self.push(v);
        }
        let rows = self.rows();
        let pos = rows.iter().position(|r| match r {
            Row::Node(n) => *n == node,
            Row::Member(m) => *m == i,
            Row::Found(_) => false,
        });
        self.list.select(Some(pos.unwrap_or(0)));
    }

    pub fn save(&mut self) -> Result<()> {
        let text = kconfig::write_config(&self.tree, &self.user);
        std::fs::write(&self.path, text)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.saved_user = self.user.clone();
        self.message = format!("saved {}", self.path.display());
        Ok(())
    }

    fn quit(&mut self) {
        if self.changed() {
            self.mode = Mode::ConfirmQuit;
        } else {
            self.done = true;
        }
    }

    fn move_by(&mut self, d: isize) {
        let n = self.rows().len();
        if n == 0 {
            self.list.select(Some(0));
            return;
        }
        let cur = self.list.selected().unwrap_or(0) as isize;
        self.list
            .select(Some((cur + d).clamp(0, n as isize - 1) as usize));
    }

    /// Handles one key press.
    pub fn key(&mut self, k: KeyEvent) -> Result<()> {
        if k.kind != KeyEventKind::Press {
            return Ok(());
        }
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            self.done = true;
            return Ok(());
        }
        match self.mode.clone() {
            Mode::Browse => {
                self.message.clear();
                match k.code {
                    KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
                    KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
                    KeyCode::PageUp => self.move_by(-10),
                    KeyCode::PageDown => self.move_by(10),
                    KeyCode::Home => self.list.select(Some(0)),
                    KeyCode::End => self.move_by(isize::MAX / 2),
                    KeyCode::Enter | KeyCode::Right => self.enter(),
                    KeyCode::Char(' ') => match self.selected_row() {
                        Some(Row::Member(_)) => self.enter(),
                        Some(r) => {
                            if let Some(i) = self.row_sym(&r) {
                                self.toggle(i, None)
                            } else {
                                self.enter()
                            }
                        }
                        None => {}
                    },
                    KeyCode::Char(c @ ('y' | 'n' | 'm')) => {
                        if let Some(i) = self.selected_row().and_then(|r| self.row_sym(&r)) {
                            if self.tree.syms[i].choice.is_some() && c == 'y' {
                                self.toggle(i, Some("y"));
                            } else if self.tree.syms[i].choice.is_none() {
                                self.toggle(i, Some(&c.to_string()));
                            }
                        }
                    }
                    KeyCode::Esc | KeyCode::Left | KeyCode::Backspace => self.back(),
                    KeyCode::Char('q') => self.quit(),
                    KeyCode::Char('s') => self.save()?,
                    KeyCode::Char('/') => {
                        self.mode = Mode::Search {
                            text: String::new(),
                        }
                    }
                    KeyCode::Char('?') | KeyCode::Char('h') => {
                        let sel = self.selected_row();
                        let node = match sel {
                            Some(Row::Node(n)) => n,
                            Some(Row::Member(i) | Row::Found(i)) => self.tree.syms[i].nodes[0],
                            None => return Ok(()),
                        };
                        let sym = sel.as_ref().and_then(|r| self.row_sym(r));
                        self.mode = Mode::Help {
                            sym,
                            node,
                            scroll: 0,
                        };
                    }
                    _ => {}
                }
            }
            Mode::Edit { sym, mut text } => match k.code {
                KeyCode::Esc => self.mode = Mode::Browse,
                KeyCode::Enter => {
                    let s = &self.tree.syms[sym];
                    if let Some(why) = kconfig::invalid(s.kind, &text) {
                        self.message = format!("{}: {why}", s.name);
                        return Ok(());
                    }
                    let name = s.name.clone();
                    self.user.insert(name.clone(), text.clone());
                    let got = self.eval().value(sym).0;
                    self.message = if got == text {
                        format!("{name} = {text}")
                    } else {
                        self.user.remove(&name);
                        format!("{name}: {text} is outside the allowed range; kept {got}")
                    };
                    self.mode = Mode::Browse;
                }
                KeyCode::Backspace => {
                    text.pop();
                    self.mode = Mode::Edit { sym, text };
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    self.mode = Mode::Edit { sym, text };
                }
                _ => {}
            },
            Mode::Search { mut text } => match k.code {
                KeyCode::Esc => self.mode = Mode::Browse,
                KeyCode::Enter => {
                    self.mode = Mode::Browse;
                    if !text.is_empty() {
                        self.push(View::Results(text));
                    }
                }
                KeyCode::Backspace => {
                    text.pop();
                    self.mode = Mode::Search { text };
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    self.mode = Mode::Search { text };
                }
                _ => {}
            },
            Mode::Help { sym, node, scroll } => match k.code {
                KeyCode::Down | KeyCode::Char('j') => {
                    self.mode = Mode::Help {
                        sym,
                        node,
                        scroll: scroll + 1,
                    }
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    self.mode = Mode::Help {
                        sym,
                        node,
                        scroll: scroll.saturating_sub(1),
                    }
                }
                _ => self.mode = Mode::Browse,
            },
            Mode::ConfirmQuit => match k.code {
                KeyCode::Char('y') | KeyCode::Enter => {
                    self.save()?;
                    self.done = true;
                }
                KeyCode::Char('n') => self.done = true,
                _ => self.mode = Mode::Browse,
            },
        }
        Ok(())
    }

    fn breadcrumb(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for v in self
            .stack
            .iter()
            .map(|(v, _)| v)
            .chain(std::iter::once(&self.view))
        {
            parts.push(match v {
                View::Menu(n) | View::Choice(n) => self.prompt(*n),
                View::Results(q) => format!("Search: {q}"),
            });
        }
        parts.join(" > ")
    }

    /// The help text for a symbol or node.
    fn help_text(&self, sym: Option<usize>, node: usize) -> Vec<Line<'static>> {
        let ev = self.eval();
        let n = &self.tree.nodes[node];
        let mut out: Vec<Line> = Vec::new();
        let push = |out: &mut Vec<Line>, s: String| out.push(Line::from(s));
        match sym {
            Some(i) => {
                let s = &self.tree.syms[i];
                let (v, written) = ev.value(i);
                push(
                    &mut out,
                    format!(
                        "Symbol: {} [={}]",
                        s.name,
                        if written { v.as_str() } else { "(no value)" }
                    ),
                );
                push(&mut out, format!("Type: {}", s.kind.name()));
                push(&mut out, format!("Prompt: {}", self.sym_prompt(i)));
                push(
                    &mut out,
                    format!("Defined at {}:{}", n.file.display(), n.line),
                );
                push(
                    &mut out,
                    format!(
                        "Depends on: {} [={}]",
                        s.direct_dep,
                        ["n", "m", "y"][ev.t(&s.direct_dep) as usize]
                    ),
                );
                push(
                    &mut out,
                    format!(
                        "Visible: {}",
                        ["no", "as m", "yes"][ev.visibility(i) as usize]
                    ),
                );
                if !s.rev.is_empty() {
                    let list: Vec<String> = s
                        .rev
                        .iter()
                        .map(|(n, e)| format!("{n} [={}]", ["n", "m", "y"][ev.t(e) as usize]))
                        .collect();
                    push(&mut out, format!("Selected by: {}", list.join(", ")));
                }
                if !s.weak_rev.is_empty() {
                    let list: Vec<String> = s
                        .weak_rev
                        .iter()
                        .map(|(n, e)| format!("{n} [={}]", ["n", "m", "y"][ev.t(e) as usize]))
                        .collect();
                    push(&mut out, format!("Implied by: {}", list.join(", ")));
                }
                if !s.selects.is_empty() {
                    push(
                        &mut out,
                        format!(
                            "Selects: {}",
                            s.selects
                                .iter()
                                .map(|(t, _)| t.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                if !s.implies.is_empty() {
                    push(
                        &mut out,
                        format!(
                            "Implies: {}",
                            s.implies
                                .iter()
                                .map(|(t, _)| t.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                push(&mut out, String::new());
                let help = if s.help.is_empty() {
                    "There is no help for this option."
                } else {
                    s.help.as_str()
                };
                for l in help.lines() {
                    push(&mut out, l.trim_end().to_string());
                }
            }
            None => {
                push(&mut out, self.prompt(node));
                push(
                    &mut out,
                    format!("Defined at {}:{}", n.file.display(), n.line),
                );
                if !n.help.is_empty() {
                    push(&mut out, String::new());
                    for l in n.help.lines() {
                        push(&mut out, l.to_string());
                    }
                }
            }
        }
        out
    }

    /// Draws the whole screen.
    pub fn draw(&mut self, f: &mut Frame) {
        let area = f.area();
        let [top, main, status, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
        let dirty = if self.changed() { " [modified]" } else { "" };
        f.render_widget(
            Paragraph::new(format!(" {}{dirty}", self.breadcrumb()))
                .style(Style::new().add_modifier(Modifier::REVERSED)),
            top,
        );
        let ev = self.eval();
        let rows = self.rows();
        let items: Vec<ListItem> = rows
            .iter()
            .map(|r| ListItem::new(self.row_text(&ev, r)))
            .collect();
        drop(ev);
        let title = match &self.view {
            View::Menu(0) => format!(" {} ", self.prompt(0)),
            View::Menu(n) | View::Choice(n) => format!(" {} ", self.prompt(*n)),
            View::Results(q) => format!(" {} symbols match '{q}' ", rows.len()),
        };
        let list = List::new(items)
            .block(Block::default().borders(Borders::ALL).title(title))
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
        if self.list.selected().unwrap_or(0) >= rows.len().max(1) {
            self.list.select(Some(rows.len().saturating_sub(1)));
        }
        f.render_stateful_widget(list, main, &mut self.list);
        f.render_widget(Paragraph::new(format!(" {}", self.message)), status);
        let hint = match self.mode {
            Mode::Browse => " Enter open/edit  Space toggle  y/n/m set  / search  ? help  s save  Esc back  q quit",
            Mode::Edit { .. } => " type the value, Enter to set, Esc to cancel",
            Mode::Search { .. } => " type a symbol name or prompt text, Enter to search, Esc to cancel",
            Mode::Help { .. } => " any key to close, arrows to scroll",
            Mode::ConfirmQuit => " Save the configuration before leaving? y: save and quit, n: quit without saving, Esc: stay",
        };
        f.render_widget(
            Paragraph::new(hint).style(Style::new().add_modifier(Modifier::DIM)),
            keys,
        );
        match self.mode.clone() {
            Mode::Edit { sym, text } => {
                let r = popup(main, 60, 5);
                f.render_widget(Clear, r);
                let s = &self.tree.syms[sym];
                let title = format!(" {} ({}) ", s.name, s.kind.name());
                f.render_widget(
                    Paragraph::new(format!("{}\n> {text}_", self.sym_prompt(sym)))
                        .block(Block::default().borders(Borders::ALL).title(title)),
                    r,
                );
            }
            Mode::Search { text } => {
                let r = popup(main, 60, 3);
                f.render_widget(Clear, r);
                f.render_widget(
                    Paragraph::new(format!("/{text}_"))
                        .block(Block::default().borders(Borders::ALL).title(" Search ")),
                    r,
                );
            }
            Mode::Help { sym, node, scroll } => {
                let r = popup(main, 90, main.height.saturating_sub(2));
                f.render_widget(Clear, r);
                let p = Paragraph::new(self.help_text(sym, node))
                    .wrap(Wrap { trim: false })
                    .scroll((scroll, 0))
                    .block(Block::default().borders(Borders::ALL).title(" Help "));
                f.render_widget(p, r);
            }
            Mode::ConfirmQuit => {
                let r = popup(main, 50, 3);
                f.render_widget(Clear, r);
                f.render_widget(
                    Paragraph::new(Line::from(vec![
                        Span::raw("Save changes? "),
                        Span::styled("(y/n/Esc)", Style::new().add_modifier(Modifier::BOLD)),
                    ]))
                    .block(Block::default().borders(Borders::ALL)),
                    r,
                );
            }
            Mode::Browse => {}
        }
    }
}

fn popup(area: Rect, width_pct: u16, height: u16) -> Rect {
    let w = (area.width * width_pct / 100).max(20).min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Runs the menu in the terminal until the user quits.
pub fn run(tree: Tree, user: User, path: PathBuf) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "kiln menu needs a terminal; use `kiln config` (--show, --set, --unset) in scripts"
        );
    }
    let mut m = Menu::new(tree, user, path);
    let mut terminal = ratatui::init();
    let r = (|| -> Result<()> {
        while !m.done {
            terminal.draw(|f| m.draw(f))?;
            if let Event::Key(k) = event::read()? {
                m.key(k)?;
            }
        }
        Ok(())
    })();
    ratatui::restore();
    r?;
    if m.saved_user != m.user {
        eprintln!("kiln: left without saving");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    const TREE: &str = r#"
mainmenu "Test tree"

menu "Libraries"

config NET
	bool "Networking"
	default y
	help
	  The network stack.

config NET_PORT
	int "Port"
	range 1 65535
	default 80
	depends on NET

config FORCED
	bool "Forced one"

config NEEDS_FORCED
	bool "Selector"
	default y
	select FORCED

choice
	prompt "Heap"
	default HEAP_A

config HEAP_A
	bool "Heap A"

config HEAP_B
	bool "Heap B"

endchoice

endmenu
"#;

    fn menu() -> (Menu, PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "kiln-menu-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("Kconfig"), TREE).unwrap();
        let tree = Tree::load_file(&d.join("Kconfig")).unwrap();
        let out = d.join(".config");
        (Menu::new(tree, User::new(), out.clone()), out)
    }

    fn screen(m: &mut Menu) -> String {
        let mut t = Terminal::new(TestBackend::new(100, 20)).unwrap();
        t.draw(|f| m.draw(f)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn press(m: &mut Menu, keys: &str) {
        for c in keys.chars() {
            let code = match c {
                '\n' => KeyCode::Enter,
                '\x1b' => KeyCode::Esc,
                '↓' => KeyCode::Down,
                '↑' => KeyCode::Up,
                '⌫' => KeyCode::Backspace,
                c => KeyCode::Char(c),
            };
            m.key(KeyEvent::new(code, KeyModifiers::NONE)).unwrap();
        }
    }

    #[test]
    fn browse_toggle_edit_choose_and_save() {
        let (mut m, out) = menu();
        assert!(screen(&mut m).contains("Libraries  --->"));
        press(&mut m, "\n");
        let s = screen(&mut m);
        assert!(s.contains("[*] Networking"), "{s}");
        assert!(s.contains("(80) Port"), "{s}");
        assert!(s.contains("-*- Forced one"), "{s}");
        assert!(s.contains("Heap (Heap A)  --->"), "{s}");
        // Turning networking off hides the port; on again shows it.
        press(&mut m, " ");
        let s = screen(&mut m);
        assert!(s.contains("[ ] Networking") && !s.contains("Port"), "{s}");
        press(&mut m, " ");
        // Editing the port: an out-of-range value is refused, a good one kept.
        press(&mut m, "↓\n⌫⌫99999\n");
        assert!(
            m.message.contains("outside the allowed range"),
            "{}",
            m.message
        );
        assert!(screen(&mut m).contains("(80) Port"));
        press(&mut m, "\n⌫⌫8080\n");
        assert!(screen(&mut m).contains("(8080) Port"), "{}", m.message);
        // A forced symbol cannot be turned off.
        press(&mut m, "↓ ");
        assert!(
            m.message.contains("forced by select from NEEDS_FORCED"),
            "{}",
            m.message
        );
        // The choice is a radio list.
        press(&mut m, "↓↓\n");
        let s = screen(&mut m);
        assert!(s.contains("(X) Heap A") && s.contains("( ) Heap B"), "{s}");
        press(&mut m, "↓\n");
        assert!(screen(&mut m).contains("Heap (Heap B)  --->"));
        assert!(screen(&mut m).contains("[modified]"));
        press(&mut m, "s");
        let saved = std::fs::read_to_string(&out).unwrap();
        assert!(
            saved.contains("CONFIG_NET_PORT=8080\n") && saved.contains("CONFIG_HEAP_B=y\n"),
            "{saved}"
        );
        assert!(!screen(&mut m).contains("[modified]"));
    }

    #[test]
    fn search_help_and_quit_asks_to_save() {
        let (mut m, out) = menu();
        press(&mut m, "/port\n");
        let s = screen(&mut m);
        assert!(
            s.contains("1 symbols match 'port'") && s.contains("NET_PORT"),
            "{s}"
        );
        press(&mut m, "\n");
        assert_eq!(m.view, View::Menu(1));
        press(&mut m, "?");
        let s = screen(&mut m);
        assert!(
            s.contains("Symbol: NET_PORT [=80]") && s.contains("Depends on: NET [=y]"),
            "{s}"
        );
        press(&mut m, "\x1b↓?");
        let s = screen(&mut m);
        assert!(s.contains("Selected by: NEEDS_FORCED [=y]"), "{s}");
        // Change something, then leave: the menu asks to save.
        press(&mut m, "\x1b↑↑n\x1b\x1b");
        assert!(matches!(m.mode, Mode::ConfirmQuit), "{:?}", m.mode);
        press(&mut m, "y");
        assert!(m.done);
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .contains("# CONFIG_NET is not set\n"));
    }
}
