//! A validated message, ready for its API.

use wxgate_protocol::api::Api;
use wxgate_protocol::wire::{BizsendMessage, MessageData, SubscribeMessage, TemplateMessage};

/// A message for one of WeChat's send APIs.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Official Account template message.
    Template(TemplateMessage),
    /// Mini Program subscribe message.
    Subscribe(SubscribeMessage),
    /// Official Account subscribe message (`bizsend`).
    Bizsend(BizsendMessage),
}

impl Outgoing {
    /// The API limits, quotas and pauses are kept under.
    pub fn api(&self) -> Api {
        match self {
            Self::Template(_) => Api::TemplateSend,
            // An app has one or the other, so they share limits.
            Self::Subscribe(_) | Self::Bizsend(_) => Api::SubscribeSend,
        }
    }

    pub fn touser(&self) -> &str {
        match self {
            Self::Template(m) => &m.touser,
            Self::Subscribe(m) => &m.touser,
            Self::Bizsend(m) => &m.touser,
        }
    }

    pub fn template_id(&self) -> &str {
        match self {
            Self::Template(m) => &m.template_id,
            Self::Subscribe(m) => &m.template_id,
            Self::Bizsend(m) => &m.template_id,
        }
    }

    pub(crate) fn template_id_mut(&mut self) -> &mut String {
        match self {
            Self::Template(m) => &mut m.template_id,
            Self::Subscribe(m) => &mut m.template_id,
            Self::Bizsend(m) => &mut m.template_id,
        }
    }

    pub fn data(&self) -> &MessageData {
        match self {
            Self::Template(m) => &m.data,
            Self::Subscribe(m) => &m.data,
            Self::Bizsend(m) => &m.data,
        }
    }

    /// The `client_msg_id` WeChat de-duplicates on (template messages only).
    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            Self::Template(m) => m.client_msg_id.as_deref(),
            _ => None,
        }
    }

    /// WeChat de-duplicates it: a repeat (within 10 minutes) cannot notify the user twice.
    pub fn dedup_protected(&self) -> bool {
        self.client_msg_id().is_some()
    }
}
