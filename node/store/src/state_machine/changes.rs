//! The working copies one apply call changes: [`TopicChanges`] and [`GroupChanges`] stand in for
//! the view's topic and group tables while the call runs, and are published to the view only
//! after the call's write batch is in RocksDB (`StateMachine::apply_entries`).
//!
//! They are apart from the command families because every family works on both: appends move a
//! topic's end offsets, deleting a topic drops every group's offsets for it, commits check a
//! topic's end offsets. A family that adds a table (the membership of coordinated groups) adds its
//! working copy here.

use std::collections::BTreeMap;

use raftlog_core::{GroupOffsets, TopicState};

/// How many names a shared table holds once an apply call's changes are published: `touched`
/// gives each changed name and whether it exists afterwards.
fn count_after_changes<'a, V>(
    live: &BTreeMap<String, V>,
    touched: impl Iterator<Item = (&'a String, bool)>,
) -> usize {
    let mut count = live.len();
    for (name, exists) in touched {
        match (live.contains_key(name), exists) {
            (false, true) => count += 1,
            (true, false) => count -= 1,
            _ => {}
        }
    }
    count
}

/// The topics one apply call changes: copies of the touched topics, published to the shared
/// table only after the write batch is in RocksDB (`None`: deleted). A copy of the whole table per
/// call would make every entry cost O(topics) on every node: with 2,000 other topics 1 KiB C=64
/// fell by a third, with 10,000 (the default topics_max) to a quarter (docs/decisions.md, "An
/// apply call copies only the topics it changes").
pub(super) struct TopicChanges<'a> {
    live: &'a BTreeMap<String, TopicState>,
    /// What the call changed, by name; taken out to be published.
    pub(super) touched: BTreeMap<String, Option<TopicState>>,
}

impl<'a> TopicChanges<'a> {
    pub(super) fn new(live: &'a BTreeMap<String, TopicState>) -> Self {
        Self {
            live,
            touched: BTreeMap::new(),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&TopicState> {
        match self.touched.get(name) {
            Some(state) => state.as_ref(),
            None => self.live.get(name),
        }
    }

    pub(super) fn exists(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(super) fn count(&self) -> usize {
        count_after_changes(
            self.live,
            self.touched
                .iter()
                .map(|(name, state)| (name, state.is_some())),
        )
    }

    /// The topic to change, copied out of the shared table the first time.
    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut TopicState> {
        if !self.touched.contains_key(name) {
            let copy = self.live.get(name)?.clone();
            self.touched.insert(name.to_string(), Some(copy));
        }
        self.touched.get_mut(name).and_then(Option::as_mut)
    }

    pub(super) fn insert(&mut self, name: String, state: TopicState) {
        self.touched.insert(name, Some(state));
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<TopicState> {
        let state = self.get(name)?.clone();
        self.touched.insert(name.to_string(), None);
        Some(state)
    }

    /// Names of the existing topics with a time or size retention, in name order.
    pub(super) fn names_with_retention(&self) -> Vec<String> {
        let live = self
            .live
            .iter()
            .filter(|(name, _)| !self.touched.contains_key(*name));
        let touched = self
            .touched
            .iter()
            .filter_map(|(name, state)| state.as_ref().map(|state| (name, state)));
        let mut names: Vec<String> = live
            .chain(touched)
            .filter(|(_, state)| {
                state.settings.retention_ms > 0 || state.settings.retention_bytes > 0
            })
            .map(|(name, _)| name.clone())
            .collect();
        names.sort_unstable();
        names
    }
}

/// The groups one apply call changes: copies of the touched groups' offsets, published to the
/// shared table only after the write batch is in RocksDB. A group whose copy ends up empty is
/// gone. Counting is exact (not an estimate), so limits apply identically on every node however
/// openraft splits entries into apply calls.
pub(super) struct GroupChanges<'a> {
    live: &'a BTreeMap<String, GroupOffsets>,
    /// What the call changed, by name; taken out to be published.
    pub(super) touched: BTreeMap<String, GroupOffsets>,
}

impl<'a> GroupChanges<'a> {
    pub(super) fn new(live: &'a BTreeMap<String, GroupOffsets>) -> Self {
        Self {
            live,
            touched: BTreeMap::new(),
        }
    }

    pub(super) fn exists(&self, name: &str) -> bool {
        match self.touched.get(name) {
            Some(offsets) => !offsets.is_empty(),
            None => self.live.contains_key(name),
        }
    }

    pub(super) fn count(&self) -> usize {
        count_after_changes(
            self.live,
            self.touched
                .iter()
                .map(|(name, offsets)| (name, !offsets.is_empty())),
        )
    }

    /// The offset `name` has committed for a partition, as this apply call has left it.
    pub(super) fn offset(&self, name: &str, topic_id: u64, partition: u32) -> Option<u64> {
        let offsets = self.touched.get(name).or_else(|| self.live.get(name))?;
        offsets.get(&(topic_id, partition)).map(|o| o.offset)
    }

    pub(super) fn touch(&mut self, name: &str) -> &mut GroupOffsets {
        if !self.touched.contains_key(name) {
            let copy = self.live.get(name).cloned().unwrap_or_default();
            self.touched.insert(name.to_string(), copy);
        }
        self.touched.get_mut(name).expect("inserted above")
    }

    /// Every existing group, touched.
    pub(super) fn touch_all(&mut self) -> impl Iterator<Item = (&String, &mut GroupOffsets)> {
        for (name, offsets) in self.live {
            if !self.touched.contains_key(name) {
                self.touched.insert(name.clone(), offsets.clone());
            }
        }
        self.touched.iter_mut()
    }
}
