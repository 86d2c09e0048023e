//! Request and response bodies of the WeChat endpoints wxgate calls, field for field.
//!
//! Message bodies reject unknown fields: the gateway accepts WeChat's own shape and nothing else,
//! so a misspelt field (`toUser`, `templateId`) is a 400 naming it rather than a silent 40003.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Paths of the WeChat endpoints, relative to the API base URL.
pub mod paths {
    pub const TOKEN: &str = "/cgi-bin/token";
    pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
    pub const TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
    pub const SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
    pub const SUBSCRIBE_BIZSEND: &str = "/cgi-bin/message/subscribe/bizsend";
    pub const GET_ALL_PRIVATE_TEMPLATE: &str = "/cgi-bin/template/get_all_private_template";
    pub const GET_NEW_TEMPLATES: &str = "/wxaapi/newtmpl/gettemplate";
}

/// `grant_type` value both token endpoints require.
pub const GRANT_TYPE: &str = "client_credential";

/// Body of `POST /cgi-bin/stable_token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableTokenRequest {
    pub grant_type: String,
    pub appid: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_refresh: bool,
}

/// Success body of both token endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
}

/// The `{errcode, errmsg}` envelope every WeChat endpoint answers with on failure (and the
/// send endpoints on success, with `errcode: 0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

/// One `data` entry: `{"value": "..."}`. `color` is accepted (WeChat ignores it since 2023-05-04).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataValue {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// The `data` object of a message: field name to value.
pub type MessageData = BTreeMap<String, DataValue>;

/// The OpenAPI schema of [`MessageData`] (documentation only), named `MessageData`.
#[cfg(feature = "openapi")]
pub struct MessageDataSchema;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MessageDataSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The template's fields (`thing1`, `character_string2`, ...), each once, to their values.",
            ))
            .additional_properties(Some(utoipa::openapi::Ref::from_schema_name("DataValue")))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MessageDataSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "MessageData".into()
    }
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push(("DataValue".into(), DataValue::schema()));
    }
}

/// Reads a `data` object, refusing a key that appears twice (a map would keep the last one
/// silently, and the caller would never learn which value was sent).
fn unique_data<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MessageData, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = MessageData;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of data fields")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<MessageData, A::Error> {
            let mut out = MessageData::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate field `{key}`"
                    )));
                }
                let value = map.next_value::<DataValue>()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// A mini program to open from a message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiniProgramLink {
    pub appid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagepath: Option<String>,
}

/// Body of `POST /cgi-bin/message/template/send` (Official Account template message).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMessage {
    pub touser: String,
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram: Option<MiniProgramLink>,
    #[serde(deserialize_with = "unique_data")]
    #[cfg_attr(feature = "openapi", schema(value_type = MessageDataSchema))]
    pub data: MessageData,
    /// WeChat's de-duplication key: one message per openid + client_msg_id for 10 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// `miniprogram_state` of a Mini Program subscribe message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MiniprogramState {
    Developer,
    Trial,
    Formal,
}

/// `lang` of a Mini Program subscribe message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lang {
    #[serde(rename = "zh_CN")]
    ZhCn,
    #[serde(rename = "en_US")]
    EnUs,
    #[serde(rename = "zh_HK")]
    ZhHk,
    #[serde(rename = "zh_TW")]
    ZhTw,
}

/// Body of `POST /cgi-bin/message/subscribe/send` (Mini Program subscribe message).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeMessage {
    pub touser: String,
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(deserialize_with = "unique_data")]
    #[cfg_attr(feature = "openapi", schema(value_type = MessageDataSchema))]
    pub data: MessageData,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<MiniprogramState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<Lang>,
}

/// Body of `POST /cgi-bin/message/subscribe/bizsend` (Official Account subscribe message).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BizsendMessage {
    pub touser: String,
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram: Option<MiniProgramLink>,
    #[serde(deserialize_with = "unique_data")]
    #[cfg_attr(feature = "openapi", schema(value_type = MessageDataSchema))]
    pub data: MessageData,
}

/// Reply of the send endpoints. `msgid` is present on template sends only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgid: Option<u64>,
}

/// One entry of `get_all_private_template`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateTemplate {
    pub template_id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub primary_industry: String,
    #[serde(default)]
    pub deputy_industry: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub example: String,
}

/// Reply of `GET /cgi-bin/template/get_all_private_template`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateTemplateList {
    #[serde(default)]
    pub template_list: Vec<PrivateTemplate>,
}

/// Allowed values of one `enum` keyword of a subscribe template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeywordEnumValues {
    #[serde(rename = "keywordCode")]
    pub keyword_code: String,
    #[serde(rename = "enumValueList", default)]
    pub enum_value_list: Vec<String>,
}

/// One entry of `wxaapi/newtmpl/gettemplate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTemplate {
    #[serde(rename = "priTmplId")]
    pub pri_tmpl_id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub example: String,
    /// 2 = one-time, 3 = long-term.
    #[serde(rename = "type", default)]
    pub kind: i32,
    #[serde(
        rename = "keywordEnumValueList",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub keyword_enum_value_list: Vec<KeywordEnumValues>,
}

/// Reply of `GET /wxaapi/newtmpl/gettemplate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTemplateList {
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
    #[serde(default)]
    pub data: Vec<NewTemplate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgid_is_64_bit() {
        let r: SendResponse =
            serde_json::from_str(r#"{"errcode":0,"errmsg":"ok","msgid":2918131553548107776}"#)
                .unwrap();
        assert_eq!(r.msgid, Some(2_918_131_553_548_107_776));
    }

    #[test]
    fn template_message_rejects_camel_case() {
        let e = serde_json::from_str::<TemplateMessage>(
            r#"{"toUser":"o1","template_id":"t","data":{}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `toUser`"), "{e}");
    }

    #[test]
    fn stable_token_request_omits_false_force_refresh() {
        let body = serde_json::to_string(&StableTokenRequest {
            grant_type: GRANT_TYPE.into(),
            appid: "wx1".into(),
            secret: "s".into(),
            force_refresh: false,
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"grant_type":"client_credential","appid":"wx1","secret":"s"}"#
        );
    }

    #[test]
    fn new_template_list_parses_wechat_names() {
        let l: NewTemplateList = serde_json::from_str(
            r#"{"errcode":0,"errmsg":"ok","data":[{"priTmplId":"p1","title":"t","content":"{{thing1.DATA}}","example":"","type":2,"keywordEnumValueList":[{"keywordCode":"phrase2.DATA","enumValueList":["a"]}]}]}"#,
        )
        .unwrap();
        assert_eq!(l.data[0].pri_tmpl_id, "p1");
        assert_eq!(l.data[0].kind, 2);
        assert_eq!(l.data[0].keyword_enum_value_list[0].enum_value_list, ["a"]);
    }
}
