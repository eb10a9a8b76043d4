//! Which flows a caller may see and call: glob patterns over flow names (`chat*`, `echo`,
//! `*`), compiled once (exact names in a hash set, the rest as `glob` patterns), so checking
//! one name is a lookup and a few pattern matches, never a regex per flow.

use std::collections::HashSet;
use std::sync::Arc;

/// The flows one caller may see and call.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    every: bool,
    names: HashSet<Box<str>>,
    patterns: Vec<glob::Pattern>,
    /// A token's scopes are intersected with `auth.jwt.flows`: a name must pass both.
    and: Option<Arc<Grant>>,
}

impl Grant {
    /// Every flow.
    pub(crate) fn all() -> Grant {
        Grant {
            every: true,
            ..Grant::default()
        }
    }

    /// No flow at all.
    pub(crate) fn none() -> Grant {
        Grant::default()
    }

    /// From glob patterns (`*` any run of characters, `?` one, `[abc]` a class); an invalid
    /// pattern is an error naming it.
    pub(crate) fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Grant, String> {
        let mut grant = Grant::default();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            if pattern == "*" {
                grant.every = true;
            } else if !pattern.contains(['*', '?', '[', ']']) {
                grant.names.insert(pattern.into());
            } else {
                grant
                    .patterns
                    .push(glob::Pattern::new(pattern).map_err(|err| {
                        format!("`{pattern}` is not a valid glob pattern: {err}")
                    })?);
            }
        }
        Ok(grant)
    }

    /// Both grants at once: a name passes only if each allows it.
    pub(crate) fn and(mut self, other: Arc<Grant>) -> Grant {
        if other.every && other.and.is_none() {
            return self;
        }
        self.and = Some(other);
        self
    }

    /// Whether `flow` may be seen and called.
    pub(crate) fn allows(&self, flow: &str) -> bool {
        let own = self.every
            || self.names.contains(flow)
            || self.patterns.iter().any(|p| p.matches(flow));
        own && self.and.as_ref().is_none_or(|other| other.allows(flow))
    }

    /// Whether every flow passes (nothing to filter).
    pub(crate) fn is_all(&self) -> bool {
        self.every && self.and.as_ref().is_none_or(|other| other.is_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_names_and_intersection() {
        let grant = Grant::new(&["echo_flow", "chat*", "t?ck"]).unwrap();
        for ok in ["echo_flow", "chat", "chat_stream", "tick"] {
            assert!(grant.allows(ok), "{ok}");
        }
        for no in ["echo", "echo_flow2", "mychat", "ticks", ""] {
            assert!(!grant.allows(no), "{no}");
        }
        assert!(!grant.is_all());
        assert!(Grant::all().is_all() && Grant::all().allows("anything"));
        assert!(!Grant::none().allows("echo_flow"));
        let both = Grant::new(&["*"])
            .unwrap()
            .and(Arc::new(Grant::new(&["chat*"]).unwrap()));
        assert!(both.allows("chat_x") && !both.allows("echo_flow") && !both.is_all());
        assert!(Grant::new(&["[unclosed"])
            .unwrap_err()
            .contains("[unclosed"));
    }
}
