//! Index from topics to the subscribers whose filters match them.

use std::collections::HashMap;
use std::sync::Arc;

use super::subscription::Shared;
use crate::topic::Topic;

/// Subscribers by exact topic, plus a list of those with wildcard filters that every message
/// is tested against.
// TODO: a trie over segments would spare the linear scan of wildcard subscribers once many
// subscribe with wildcards.
#[derive(Default)]
pub(super) struct Registry {
    exact: HashMap<Arc<str>, Vec<Arc<Shared>>>,
    wildcard: Vec<Arc<Shared>>,
}

impl Registry {
    pub(super) fn insert(&mut self, subscriber: &Arc<Shared>) {
        let mut has_wildcard = false;
        for filter in subscriber.filters() {
            if filter.is_wildcard() {
                has_wildcard = true;
                continue;
            }
            let list = self.exact.entry(Arc::from(filter.as_str())).or_default();
            if !list.iter().any(|s| s.id() == subscriber.id()) {
                list.push(subscriber.clone());
            }
        }
        if has_wildcard {
            self.wildcard.push(subscriber.clone());
        }
    }

    pub(super) fn remove(&mut self, subscriber: &Shared) {
        let id = subscriber.id();
        for filter in subscriber.filters() {
            if filter.is_wildcard() {
                continue;
            }
            if let Some(list) = self.exact.get_mut(filter.as_str()) {
                list.retain(|s| s.id() != id);
                if list.is_empty() {
                    self.exact.remove(filter.as_str());
                }
            }
        }
        self.wildcard.retain(|s| s.id() != id);
    }

    /// Every subscriber with a filter matching `topic`, each once.
    pub(super) fn matching(&self, topic: &Topic) -> Vec<&Arc<Shared>> {
        let mut found: Vec<&Arc<Shared>> = Vec::new();
        if let Some(list) = self.exact.get(topic.as_str()) {
            found.extend(list.iter());
        }
        for subscriber in &self.wildcard {
            if subscriber.filters().iter().any(|f| f.matches(topic)) {
                found.push(subscriber);
            }
        }
        // A subscriber with both an exact and a wildcard filter for this topic is listed twice.
        if found.len() > 1 {
            found.sort_unstable_by_key(|s| s.id());
            found.dedup_by_key(|s| s.id());
        }
        found
    }
}
