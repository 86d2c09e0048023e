//! Parses `{{name.DATA}}` placeholders out of template content (wechat-api.md §4).
//!
//! A template's `content` (from `get_all_private_template` or `wxaapi/newtmpl/gettemplate`)
//! names its data fields as `{{name.DATA}}`, e.g. `会议时间:{{date2.DATA}}\n`. Anything between
//! `{{` and `}}` that does not end in `.DATA` is a reserved word, not a placeholder. Names are
//! `[A-Za-z_]+[0-9]*`.
//!
//! The parser is tolerant of whitespace (any Unicode whitespace) between and inside the braces,
//! as WeChat's newer doc pages render `{ {result.DATA} }`: `{{ thing1.DATA }}` and
//! `{ {thing1.DATA} }` count, `{{thing1 .DATA}}` does not. `.DATA` is case-sensitive.

/// The names of the `{{name.DATA}}` placeholders of `content`, in order of first appearance,
/// without duplicates.
pub fn placeholders(content: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut pos = 0;
    while let Some(offset) = content[pos..].find('{') {
        let start = pos + offset;
        match placeholder_at(&content[start..]) {
            Some((name, len)) => {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
                pos = start + len;
            }
            None => pos = start + 1,
        }
    }
    names
}

/// Matches `{ws*{ws*NAME.DATA ws*}ws*}` at the start of `s`: the name and the match's length.
fn placeholder_at(s: &str) -> Option<(&str, usize)> {
    let mut rest = s.strip_prefix('{')?.trim_start();
    rest = rest.strip_prefix('{')?.trim_start();
    let letters = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphabetic() || *b == b'_')
        .count();
    if letters == 0 {
        return None;
    }
    let digits = rest[letters..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let (name, after) = rest.split_at(letters + digits);
    rest = after.strip_prefix(".DATA")?.trim_start();
    rest = rest.strip_prefix('}')?.trim_start();
    rest = rest.strip_prefix('}')?;
    Some((name, s.len() - rest.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(content: &str, want: &[&str]) {
        assert_eq!(placeholders(content), want, "{content:?}");
    }

    #[test]
    fn legacy_template() {
        check(
            "{{first.DATA}}\n{{keyword1.DATA}}\n{{remark.DATA}}",
            &["first", "keyword1", "remark"],
        );
        check(
            "{{result.DATA}}\n\n领奖金额:{{withdrawMoney.DATA}}\n领奖时间:{{withdrawTime.DATA}}",
            &["result", "withdrawMoney", "withdrawTime"],
        );
    }

    #[test]
    fn category_template() {
        check(
            "会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n",
            &["date2", "thing1"],
        );
        check(
            "{{character_string12.DATA}}{{phone_number03.DATA}}",
            &["character_string12", "phone_number03"],
        );
    }

    #[test]
    fn spaces_inside_braces() {
        check("{ {result.DATA} }", &["result"]);
        check("{{ thing1.DATA }}", &["thing1"]);
        check("{ { thing1.DATA } }", &["thing1"]);
        check("{{\tthing1.DATA\u{3000}}}", &["thing1"]);
        check(
            "时间:{ {time3.DATA} }\n地点:{{ thing1.DATA }}",
            &["time3", "thing1"],
        );
    }

    #[test]
    fn duplicates_keep_first_appearance() {
        check(
            "{{b1.DATA}}{{a1.DATA}}{{b1.DATA}}{ {a1.DATA} }{{c.DATA}}",
            &["b1", "a1", "c"],
        );
    }

    #[test]
    fn reserved_words_and_malformed_tokens_are_ignored() {
        check(
            "{{first}}{{thing1.VALUE}}{{thing1.data}}{{thing1 .DATA}}",
            &[],
        );
        check(
            "{{keyword1a.DATA}}{{1thing.DATA}}{{thing-1.DATA}}{{.DATA}}",
            &[],
        );
        check("{{thing1.DATA}{{thing2.DATA}} {thing3.DATA}}", &["thing2"]);
        check("{{{thing1.DATA}}}", &["thing1"]);
        check("{{thing1.DATAX}}{{thing2.DATA}}", &["thing2"]);
        check("{{事项1.DATA}}", &[]);
    }

    #[test]
    fn empty_content() {
        check("", &[]);
        check("no placeholders here { } {{}}", &[]);
        check("{", &[]);
        check("{{thing1.DATA}", &[]);
    }
}
