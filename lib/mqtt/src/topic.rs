//! Topic names and filters: validity, and which filters match a name.

/// Whether `f` is a valid topic filter: `#` only as the last level, `+`
/// only as a whole level, not empty.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() {
        return false;
    }
    let levels: alloc::vec::Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return false;
        }
        if l.contains('+') && *l != "+" {
            return false;
        }
    }
    true
}

/// Whether `name` is a valid topic name for PUBLISH (no wildcards, not empty).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#'])
}

/// Whether filter `f` matches topic `name`. Topics starting with `$` (the
/// broker's `$SYS` tree) are not matched by a filter starting with a
/// wildcard.
pub fn matches(f: &str, name: &str) -> bool {
    if name.starts_with('$') && (f.starts_with('+') || f.starts_with('#')) {
        return false;
    }
    let mut fl = f.split('/');
    let mut nl = name.split('/');
    loop {
        match (fl.next(), nl.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic filter `f` could match is also matched by `rule`
/// (an ACL pattern): how a subscription is checked against read rules.
pub fn covers(rule: &str, f: &str) -> bool {
    let mut rl = rule.split('/');
    let mut fl = f.split('/');
    loop {
        match (rl.next(), fl.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_standard_says() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+/c", "a//c"));
        // $SYS apart.
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn filters_are_validated() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "a//b"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "#/a", "a/b+"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn acl_rules_cover_subscriptions() {
        assert!(covers("sensors/#", "sensors/+/temp"));
        assert!(covers("sensors/+/temp", "sensors/a/temp"));
        assert!(!covers("sensors/+/temp", "sensors/#"));
        assert!(!covers("sensors/a", "sensors/+"));
        assert!(covers("#", "#"));
    }
}
