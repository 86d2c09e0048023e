//! The rules a decoded message must pass before anything is sent, counted or stored. Each
//! failure is a 422 naming the field. The data value rules themselves live in
//! `wxgate_protocol::data_rules`, shared with the fake WeChat.
//!
//! Limits WeChat does not document (lengths of `touser`, `template_id`, `client_msg_id`, URLs)
//! are generous bounds that keep garbage out, not WeChat's own figures.

use wxgate_protocol::data_rules;
use wxgate_protocol::wire::{
    BizsendMessage, MessageData, MiniProgramLink, SubscribeMessage, TemplateMessage,
};

use crate::error::ApiError;

const MAX_ID: usize = 128;
const MAX_URL: usize = 1024;
const MAX_DATA_FIELDS: usize = 32;

pub fn template(m: &TemplateMessage) -> Result<(), ApiError> {
    openid("touser", &m.touser)?;
    ident("template_id", &m.template_id)?;
    if let Some(url) = &m.url {
        web_url("url", url)?;
    }
    if let Some(mp) = &m.miniprogram {
        miniprogram(mp)?;
    }
    if let Some(id) = &m.client_msg_id {
        ident("client_msg_id", id)?;
    }
    data(&m.data)
}

pub fn subscribe(m: &SubscribeMessage) -> Result<(), ApiError> {
    openid("touser", &m.touser)?;
    ident("template_id", &m.template_id)?;
    if let Some(page) = &m.page {
        bounded_text("page", page, MAX_URL)?;
    }
    data(&m.data)
}

pub fn bizsend(m: &BizsendMessage) -> Result<(), ApiError> {
    openid("touser", &m.touser)?;
    ident("template_id", &m.template_id)?;
    if let Some(page) = &m.page {
        web_url("page", page)?;
    }
    if let Some(mp) = &m.miniprogram {
        miniprogram(mp)?;
    }
    data(&m.data)
}

fn openid(field: &str, v: &str) -> Result<(), ApiError> {
    ident(field, v)
}

/// Non-empty, at most 128 characters, printable ASCII without spaces.
fn ident(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    if v.len() > MAX_ID {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` exceeds {MAX_ID} characters"),
        ));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be printable ASCII without spaces"),
        ));
    }
    Ok(())
}

fn bounded_text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.chars().count() > max {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` exceeds {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` contains control characters"),
        ));
    }
    Ok(())
}

fn web_url(field: &str, v: &str) -> Result<(), ApiError> {
    bounded_text(field, v, MAX_URL)?;
    if !(v.starts_with("https://") || v.starts_with("http://")) || v.contains(char::is_whitespace) {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be an http(s) URL"),
        ));
    }
    Ok(())
}

fn miniprogram(mp: &MiniProgramLink) -> Result<(), ApiError> {
    let id = &mp.appid;
    if !(id.len() == 18 && id.starts_with("wx") && id.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err(ApiError::invalid_field(
            "miniprogram.appid",
            "`miniprogram.appid` must be a WeChat appid (wx + 16 letters or digits)",
        ));
    }
    if let Some(p) = &mp.pagepath {
        bounded_text("miniprogram.pagepath", p, MAX_URL)?;
    }
    Ok(())
}

fn data(d: &MessageData) -> Result<(), ApiError> {
    if d.is_empty() {
        return Err(ApiError::invalid_field(
            "data",
            "`data` must hold at least one field",
        ));
    }
    if d.len() > MAX_DATA_FIELDS {
        return Err(ApiError::invalid_field(
            "data",
            format!("`data` holds more than {MAX_DATA_FIELDS} fields"),
        ));
    }
    data_rules::check_data(d).map_err(|e| {
        let field = if data_rules::valid_key(&e.key) {
            format!("data.{}.value", e.key)
        } else {
            format!("data.{}", e.key)
        };
        ApiError::invalid_field(field.clone(), format!("`{field}` {}", e.reason))
    })
}
