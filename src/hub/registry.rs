//! Index from topics to the subscribers whose filters match them.
//!
//! Exact filters sit in a hash map keyed by the topic. Wildcard filters sit in a trie over
//! topic segments, with a `+` branch at every level and a list of `#` filters ending there, so
//! matching a topic walks at most a few branches per segment instead of testing every filter.

use std::collections::HashMap;
use std::sync::Arc;

use super::subscription::Shared;
use crate::topic::Topic;

#[derive(Default)]
pub(super) struct Registry {
    exact: HashMap<Arc<str>, Vec<Arc<Shared>>>,
    wildcard: Node,
}

/// One level of the wildcard trie.
#[derive(Default)]
struct Node {
    /// Children for literal segments.
    children: HashMap<Box<str>, Node>,
    /// Child for a `+` segment.
    plus: Option<Box<Node>>,
    /// Subscribers whose filter ends at this node.
    here: Vec<Arc<Shared>>,
    /// Subscribers whose filter ends with `#` after this node's segments.
    hash: Vec<Arc<Shared>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }

    fn insert(&mut self, mut segments: std::str::Split<'_, char>, subscriber: &Arc<Shared>) {
        match segments.next() {
            None => push_once(&mut self.here, subscriber),
            Some("#") => push_once(&mut self.hash, subscriber),
            Some("+") => self
                .plus
                .get_or_insert_with(Default::default)
                .insert(segments, subscriber),
            Some(literal) => self
                .children
                .entry(literal.into())
                .or_default()
                .insert(segments, subscriber),
        }
    }

    /// Removes `id` from the path of one filter, pruning nodes left empty.
    fn remove(&mut self, mut segments: std::str::Split<'_, char>, id: u64) {
        match segments.next() {
            None => self.here.retain(|s| s.id() != id),
            Some("#") => self.hash.retain(|s| s.id() != id),
            Some("+") => {
                if let Some(plus) = self.plus.as_mut() {
                    plus.remove(segments, id);
                    if plus.is_empty() {
                        self.plus = None;
                    }
                }
            }
            Some(literal) => {
                if let Some(child) = self.children.get_mut(literal) {
                    child.remove(segments, id);
                    if child.is_empty() {
                        self.children.remove(literal);
                    }
                }
            }
        }
    }

    /// Collects the subscribers of every filter matching the remaining `segments`.
    fn collect<'a>(&'a self, segments: &[&str], found: &mut Vec<&'a Arc<Shared>>) {
        // `a/#` matches `a` itself and everything below it (MQTT 3.1.1, 4.7.1.2).
        found.extend(self.hash.iter());
        let Some((first, rest)) = segments.split_first() else {
            found.extend(self.here.iter());
            return;
        };
        if let Some(child) = self.children.get(*first) {
            child.collect(rest, found);
        }
        if let Some(plus) = &self.plus {
            plus.collect(rest, found);
        }
    }
}

fn push_once(list: &mut Vec<Arc<Shared>>, subscriber: &Arc<Shared>) {
    if !list.iter().any(|s| s.id() == subscriber.id()) {
        list.push(subscriber.clone());
    }
}

impl Registry {
    pub(super) fn insert(&mut self, subscriber: &Arc<Shared>) {
        for filter in subscriber.filters() {
            if filter.is_wildcard() {
                self.wildcard.insert(filter.as_str().split('/'), subscriber);
                continue;
            }
            let list = self.exact.entry(Arc::from(filter.as_str())).or_default();
            push_once(list, subscriber);
        }
    }

    pub(super) fn remove(&mut self, subscriber: &Shared) {
        let id = subscriber.id();
        for filter in subscriber.filters() {
            if filter.is_wildcard() {
                self.wildcard.remove(filter.as_str().split('/'), id);
                continue;
            }
            if let Some(list) = self.exact.get_mut(filter.as_str()) {
                list.retain(|s| s.id() != id);
                if list.is_empty() {
                    self.exact.remove(filter.as_str());
                }
            }
        }
    }

    /// Every subscriber with a filter matching `topic`, each once.
    pub(super) fn matching(&self, topic: &Topic) -> Vec<&Arc<Shared>> {
        let mut found: Vec<&Arc<Shared>> = Vec::new();
        if let Some(list) = self.exact.get(topic.as_str()) {
            found.extend(list.iter());
        }
        let segments: Vec<&str> = topic.as_str().split('/').collect();
        self.wildcard.collect(&segments, &mut found);
        // A subscriber with several filters matching this topic is listed once per filter.
        if found.len() > 1 {
            found.sort_unstable_by_key(|s| s.id());
            found.dedup_by_key(|s| s.id());
        }
        found
    }
}

/// Tests the trie against [`Filter::matches`], the reference rule, on every pair.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::QueueLimits;
    use crate::topic::Filter;

    #[test]
    fn trie_agrees_with_filter_rule() {
        let filters = [
            "a", "a/b", "a/+", "a/#", "#", "+", "+/b", "+/+", "a/+/c", "a/b/#", "+/#", "x/y/z",
        ];
        let topics = ["a", "a/b", "a/c", "a/b/c", "b", "b/b", "x/y/z", "a/b/c/d"];
        let mut registry = Registry::default();
        let subscribers: Vec<Arc<Shared>> = filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let filter = Filter::parse(f).unwrap();
                Arc::new(Shared::new(
                    i as u64,
                    vec![filter],
                    QueueLimits::default(),
                    0,
                    false,
                ))
            })
            .collect();
        for subscriber in &subscribers {
            registry.insert(subscriber);
        }
        for topic in topics {
            let topic = Topic::parse(topic).unwrap();
            let mut expected: Vec<u64> = subscribers
                .iter()
                .filter(|s| s.filters()[0].matches(&topic))
                .map(|s| s.id())
                .collect();
            expected.sort_unstable();
            let found: Vec<u64> = registry.matching(&topic).iter().map(|s| s.id()).collect();
            assert_eq!(found, expected, "topic {topic}");
        }
        for subscriber in &subscribers {
            registry.remove(subscriber);
        }
        assert!(registry.exact.is_empty());
        assert!(registry.wildcard.is_empty());
    }
}
