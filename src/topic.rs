//! Topic names and subscription filters.
//!
//! A topic name is a `/`-separated list of segments, such as `sensors/kitchen/temp`. A filter
//! matches topic names the way MQTT 3.1.1 filters do: `+` stands for exactly one segment and
//! `#`, allowed only as the last segment, for zero or more trailing segments. Names are checked
//! once, when they enter the hub, so matching itself never fails.

use std::fmt;
use std::sync::Arc;

/// Maximum length of a topic name or filter, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Maximum number of `/`-separated segments in a topic name or filter.
pub const MAX_SEGMENTS: usize = 32;

/// A validated topic name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// A validated subscription filter.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    text: Arc<str>,
    wildcard: bool,
}

/// Reason a topic name or filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes long, the maximum is {MAX_TOPIC_LEN}")]
    TooLong { len: usize },
    #[error("topic has {count} segments, the maximum is {MAX_SEGMENTS}")]
    TooManySegments { count: usize },
    #[error(
        "{topic:?} has an empty segment: remove the leading, trailing or doubled `/` (in a URL, \
         write the `#` wildcard as %23, since `#` starts the fragment)"
    )]
    EmptySegment { topic: String },
    #[error("{topic:?} contains a control character")]
    ControlCharacter { topic: String },
    #[error(
        "{topic:?} contains a space (in a URL query, `+` decodes to a space: write the `+` \
         wildcard as %2B)"
    )]
    Space { topic: String },
    #[error(
        "topic name {topic:?} contains the wildcard `{wildcard}`: wildcards are allowed only in \
         subscription filters"
    )]
    WildcardInName { topic: String, wildcard: char },
    #[error(
        "filter {filter:?} uses a wildcard inside a segment: `+` and `#` must fill a whole segment"
    )]
    PartialWildcard { filter: String },
    #[error("filter {filter:?} has `#` before its last segment: `#` may only end a filter")]
    HashNotLast { filter: String },
}

fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: text.len() });
    }
    if text.chars().any(char::is_control) {
        return Err(TopicError::ControlCharacter {
            topic: text.to_owned(),
        });
    }
    // Topics never contain spaces, so a space is almost always a `+` that a URL decoded.
    if text.contains(' ') {
        return Err(TopicError::Space {
            topic: text.to_owned(),
        });
    }
    let count = text.split('/').count();
    if count > MAX_SEGMENTS {
        return Err(TopicError::TooManySegments { count });
    }
    if text.split('/').any(str::is_empty) {
        return Err(TopicError::EmptySegment {
            topic: text.to_owned(),
        });
    }
    Ok(())
}

impl Topic {
    /// Validates a topic name.
    ///
    /// # Errors
    ///
    /// Returns [`TopicError`] when the name is empty, too long, has an empty segment, contains a
    /// control character or a wildcard.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        check_common(text)?;
        if let Some(wildcard) = text.chars().find(|c| *c == '+' || *c == '#') {
            return Err(TopicError::WildcardInName {
                topic: text.to_owned(),
                wildcard,
            });
        }
        Ok(Self(Arc::from(text)))
    }

    /// Returns the topic name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Filter {
    /// Validates a subscription filter.
    ///
    /// # Errors
    ///
    /// Returns [`TopicError`] for the same faults as [`Topic::parse`], and when `+` or `#` share a
    /// segment with other characters or `#` is not the last segment.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        check_common(text)?;
        let segments: Vec<&str> = text.split('/').collect();
        let last = segments.len() - 1;
        for (index, segment) in segments.iter().enumerate() {
            let has_wildcard = segment.contains(['+', '#']);
            if has_wildcard && segment.len() > 1 {
                return Err(TopicError::PartialWildcard {
                    filter: text.to_owned(),
                });
            }
            if *segment == "#" && index != last {
                return Err(TopicError::HashNotLast {
                    filter: text.to_owned(),
                });
            }
        }
        Ok(Self {
            wildcard: text.contains(['+', '#']),
            text: Arc::from(text),
        })
    }

    /// Returns the filter as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Tests whether the filter contains `+` or `#`. A filter without them matches one topic only.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Tests whether `topic` matches this filter.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_name(&topic.0)
    }

    /// Tests whether the topic name `name` matches this filter, without validating `name`
    /// first. Clients use it on names the server sent, which the server has already checked.
    pub fn matches_name(&self, name: &str) -> bool {
        if !self.wildcard {
            return *self.text == *name;
        }
        let mut names = name.split('/');
        for pattern in self.text.split('/') {
            match pattern {
                "#" => return true,
                "+" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if names.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(filter: &str, topic: &str) -> bool {
        Filter::parse(filter)
            .unwrap()
            .matches(&Topic::parse(topic).unwrap())
    }

    #[test]
    fn exact_filter_matches_same_name_only() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b", "a"));
    }

    #[test]
    fn plus_matches_exactly_one_segment() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/c"));
        assert!(!matches("a/+/c", "a/b/x/c"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "a/b"));
    }

    #[test]
    fn hash_matches_rest_including_parent() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b"));
        assert!(matches("a/#", "a/b/c/d"));
        assert!(!matches("a/#", "b/a"));
        assert!(matches("#", "x/y"));
        assert!(matches("a/+/#", "a/b"));
        assert!(matches("a/+/#", "a/b/c"));
        assert!(!matches("a/+/#", "a"));
    }

    #[test]
    fn invalid_names_are_rejected() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert!(matches!(
            Topic::parse("a//b"),
            Err(TopicError::EmptySegment { .. })
        ));
        assert!(matches!(
            Topic::parse("/a"),
            Err(TopicError::EmptySegment { .. })
        ));
        assert!(matches!(
            Topic::parse("a/"),
            Err(TopicError::EmptySegment { .. })
        ));
        assert!(matches!(
            Topic::parse("a/+"),
            Err(TopicError::WildcardInName { wildcard: '+', .. })
        ));
        assert!(matches!(
            Topic::parse("a\nb"),
            Err(TopicError::ControlCharacter { .. })
        ));
        assert!(matches!(
            Filter::parse("a/ /b"),
            Err(TopicError::Space { .. })
        ));
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(matches!(
            Topic::parse(&long),
            Err(TopicError::TooLong { .. })
        ));
        let deep = vec!["a"; MAX_SEGMENTS + 1].join("/");
        assert!(matches!(
            Topic::parse(&deep),
            Err(TopicError::TooManySegments { .. })
        ));
    }

    #[test]
    fn invalid_filters_are_rejected() {
        assert!(matches!(
            Filter::parse("a/#/b"),
            Err(TopicError::HashNotLast { .. })
        ));
        assert!(matches!(
            Filter::parse("a/b+"),
            Err(TopicError::PartialWildcard { .. })
        ));
        assert!(matches!(
            Filter::parse("a/#x"),
            Err(TopicError::PartialWildcard { .. })
        ));
        assert!(Filter::parse("a/+/#").is_ok());
    }
}
