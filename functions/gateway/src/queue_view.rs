//! Read-only access to the queue's status: the topic is attached (`Queue::attach` writes nothing;
//! the stored partition count wins), once it exists, and reused.

use etcd_client::Client;
use etcd_queue::{Queue, QueueConfig, QueueError, QueueStatus};
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
        match Queue::attach(self.client.clone(), self.config.clone()).await? {
            None => Ok(None),
            Some(queue) => {
                let queue = self.opened.get_or_init(|| async { queue }).await;
                queue.status().await.map(Some)
            }
        }
    }
}
