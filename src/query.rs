//! URL query strings, read from the serialized request URL without the `url`
//! crate: parsing a `Url` links its IDNA and Unicode-normalization tables
//! into the wasm (about 150 KB) for hosts the worker never looks at.

use std::borrow::Cow;

/// The query of a serialized (WHATWG) URL such as `Request.url`: what
/// follows the first `?` before any `#` fragment; empty without one. The
/// host and path of a serialized URL hold no raw `?` or `#`.
pub fn of_url(url: &str) -> &str {
    let before_fragment = url.split_once('#').map_or(url, |(u, _)| u);
    before_fragment.split_once('?').map_or("", |(_, q)| q)
}

/// The values of every `name` parameter in `query` (a leading `?` is
/// allowed), in order, form-urlencoded decoding applied to names and values
/// (`+` is a space, `%XX` a byte, invalid UTF-8 replaced), as
/// `url::Url::query_pairs` decodes them.
pub fn values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query.strip_prefix('?').unwrap_or(query).split('&').filter(|pair| !pair.is_empty()).filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v).into_owned())
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['+', '%']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_of_a_url() {
        assert_eq!(
            of_url("https://h.example/ofrep/v1/evaluate/flags?flagConfigEtag=%22a%22"),
            "flagConfigEtag=%22a%22"
        );
        assert_eq!(of_url("https://h.example/metrics?consistent=1#frag"), "consistent=1");
        assert_eq!(of_url("https://h.example/metrics?a=1?b=2"), "a=1?b=2");
        assert_eq!(of_url("https://h.example/metrics"), "");
        assert_eq!(of_url("https://h.example/metrics#x?y=1"), "");
        assert_eq!(of_url("https://h.example/metrics?"), "");
    }

    #[test]
    fn values_are_decoded_and_all_returned() {
        let all = |q, n| values(q, n).collect::<Vec<_>>();
        assert_eq!(all("consistent=0&consistent=1", "consistent"), ["0", "1"]);
        assert_eq!(all("?x=a+b%20c%2B", "x"), ["a b c+"]);
        assert_eq!(all("consisten%74=1", "consistent"), ["1"]);
        assert_eq!(all("consistent&x=1&&", "consistent"), [""]);
        assert_eq!(all("x=%FF", "x"), ["\u{fffd}"]);
        assert!(all("consistently=1&", "consistent").is_empty());
        assert!(all("", "consistent").is_empty());
    }
}
