//! Wildcard values: `*` matches zero or more characters, anywhere, anchored at both ends.

/// A compiled wildcard value such as `foo*`, `*bar` or `a*b*c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// The literal pieces between stars, in order.
    pieces: Vec<String>,
}

impl Pattern {
    /// A pattern, if `value` contains a star; a plain value is an exact match instead.
    pub fn parse(value: &str) -> Option<Pattern> {
        value.contains('*').then(|| Pattern {
            text: value.to_owned(),
            pieces: value.split('*').map(str::to_owned).collect(),
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches the whole pattern.
    pub fn matches(&self, value: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("a pattern has pieces");
        let (last, middle) = rest.split_last().expect("a pattern has a star");
        let Some(mut tail) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        for piece in middle {
            match tail.find(piece.as_str()) {
                Some(at) => tail = &tail[at + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, value: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(value)
    }

    #[test]
    fn a_plain_value_is_not_a_pattern() {
        assert!(Pattern::parse("foo").is_none());
    }

    #[test]
    fn a_trailing_star_matches_any_suffix_including_none() {
        assert!(matches("foo*", "foo"));
        assert!(matches("foo*", "foobar"));
        assert!(!matches("foo*", "fo"));
        assert!(!matches("foo*", "xfoo"));
    }

    #[test]
    fn stars_match_anywhere_and_are_anchored() {
        assert!(matches("*bar", "foobar"));
        assert!(!matches("*bar", "barfoo"));
        assert!(matches("a*b*c", "abc"));
        assert!(matches("a*b*c", "a-x-b-y-c"));
        assert!(!matches("a*b*c", "a-x-c-y-b"));
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn overlapping_prefix_and_suffix_need_enough_characters() {
        assert!(!matches("ab*ba", "aba"));
        assert!(matches("ab*ba", "abba"));
    }
}
