//! Applying the topic commands: create a topic, alter its retention, delete it (with its stored
//! batches and every group's offsets for it). A topic's row holds its settings and its partitions'
//! offsets; the appends that move those offsets are in `appends.rs`.

use rocksdb::WriteBatch;

use super::changes::{GroupChanges, TopicChanges};
use super::StateMachine;
use crate::codec::encode;
use crate::keys::{self, sm_tag};
use raftlog_core::{
    Command, CommandResponse, PartitionState, Rejection, TopicSettings, TopicState,
};

impl StateMachine {
    /// Applies `Command::CreateTopic`, `AlterTopic` or `DeleteTopic`.
    pub(super) fn apply_topic_command(
        &mut self,
        command: &Command,
        topics: &mut TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        match command {
            Command::CreateTopic {
                name,
                settings,
                topics_max,
            } => self.create_topic(name, settings, *topics_max, topics, batch),
            Command::AlterTopic {
                name,
                retention_ms,
                retention_bytes,
            } => self.alter_topic(name, *retention_ms, *retention_bytes, topics, batch),
            Command::DeleteTopic { name } => {
                let response = self.delete_topic(name, topics, groups, batch);
                if matches!(response, CommandResponse::TopicDeleted) {
                    self.forget_redrive_cursors(name, batch);
                }
                response
            }
            other => unreachable!("not a topic command: {other}"),
        }
    }

    /// A new topic with the next topic id, unless the name is taken or `topics_max` reached.
    pub(super) fn create_topic(
        &mut self,
        name: &str,
        settings: &TopicSettings,
        topics_max: u32,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let (group, cf) = (self.view.group, self.view.cf());
        if topics.exists(name) {
            return CommandResponse::Rejected(Rejection::TopicExists(name.to_string()));
        }
        if topics.count() >= topics_max as usize {
            return CommandResponse::Rejected(Rejection::TooManyTopics(topics_max));
        }
        let id = self.next_topic_id;
        self.next_topic_id += 1;
        batch.put_cf(
            cf,
            keys::sm_singleton(group, sm_tag::NEXT_TOPIC_ID),
            encode(&self.next_topic_id),
        );
        let partitions = vec![PartitionState::default(); settings.partitions as usize];
        let topic = TopicState {
            id,
            name: name.to_string(),
            settings: settings.clone(),
            partitions,
        };
        batch.put_cf(cf, keys::sm_topic(group, name), encode(&topic));
        topics.insert(name.to_string(), topic);
        CommandResponse::TopicCreated { topic_id: id }
    }

    /// Sets the topic's time and size retention; `None` keeps the current value.
    fn alter_topic(
        &self,
        name: &str,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        topics: &mut TopicChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let Some(state) = topics.get_mut(name) else {
            return CommandResponse::Rejected(Rejection::UnknownTopic(name.to_string()));
        };
        if let Some(ms) = retention_ms {
            state.settings.retention_ms = ms;
        }
        if let Some(bytes) = retention_bytes {
            state.settings.retention_bytes = bytes;
        }
        batch.put_cf(
            self.view.cf(),
            keys::sm_topic(self.view.group, name),
            encode(&*state),
        );
        CommandResponse::TopicAltered
    }

    /// Deletes the topic's row, its stored batches and every group's offsets for it.
    fn delete_topic(
        &self,
        name: &str,
        topics: &mut TopicChanges<'_>,
        groups: &mut GroupChanges<'_>,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let (group, cf) = (self.view.group, self.view.cf());
        let Some(state) = topics.remove(name) else {
            return CommandResponse::Rejected(Rejection::UnknownTopic(name.to_string()));
        };
        batch.delete_cf(cf, keys::sm_topic(group, name));
        batch.delete_range_cf(
            cf,
            keys::sm_batch(group, state.id, 0, 0),
            keys::sm_topic_batches_end(group, state.id),
        );
        for (group_name, offsets) in groups.touch_all() {
            offsets.retain(|&(topic_id, partition), _| {
                if topic_id == state.id {
                    batch.delete_cf(
                        cf,
                        keys::sm_group_offset(group, group_name, topic_id, partition),
                    );
                }
                topic_id != state.id
            });
        }
        CommandResponse::TopicDeleted
    }
}
