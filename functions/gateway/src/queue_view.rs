//! Read-only access to the queue's status. `Queue::open` creates a missing topic, which a reader
//! must never do: the topic's metadata key is checked first and a missing topic is reported as
//! such. An existing topic is opened once (with its stored partition count) and reused.

use etcd_client::{Client, GetOptions};
use etcd_queue::{Queue, QueueConfig, QueueError, QueueKeys, QueueStatus};
use tokio::sync::OnceCell;

/// The queue status as the gateway sees it: `None` until the topic exists.
#[derive(Clone)]
pub struct QueueView {
    client: Client,
    config: QueueConfig,
    opened: std::sync::Arc<OnceCell<Queue>>,
}

impl QueueView {
    pub fn new(client: Client, config: QueueConfig) -> Self {
        QueueView {
            client,
            config,
            opened: std::sync::Arc::new(OnceCell::new()),
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The topic's status, or `None` if no streamer or collector has created it yet.
    pub async fn status(&self) -> Result<Option<QueueStatus>, QueueError> {
        if let Some(queue) = self.opened.get() {
            return queue.status().await.map(Some);
        }
        if !self.topic_exists().await? {
            return Ok(None);
        }
        let queue = self
            .opened
            .get_or_try_init(|| async {
                match Queue::open(self.client.clone(), self.config.clone()).await {
                    // The stored partition count wins: the gateway only reads.
                    Err(QueueError::PartitionMismatch { stored, .. }) => {
                        Queue::open(
                            self.client.clone(),
                            QueueConfig {
                                partitions: stored,
                                ..self.config.clone()
                            },
                        )
                        .await
                    }
                    other => other,
                }
            })
            .await?;
        queue.status().await.map(Some)
    }

    async fn topic_exists(&self) -> Result<bool, QueueError> {
        let keys = QueueKeys::new(&self.config.prefix, &self.config.topic)?;
        let mut client = self.client.clone();
        let response = client
            .get(keys.meta(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|source| QueueError::Etcd {
                operation: "read topic metadata",
                source,
            })?;
        Ok(response.count() > 0)
    }
}
