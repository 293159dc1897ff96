//! GET /: the chat page. `chat.html` is one self-contained file (HTML, CSS and JS, no build
//! step) that talks only to this server's own API. Its Content-Security-Policy allows the
//! page's one inline script and one inline style by their SHA-256 and loads from this origin
//! only, so nothing can be fetched from elsewhere even if a bug let model text into the DOM.
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The page.
pub(crate) const PAGE: &str = include_str!("chat.html");

/// Standard base64 (with padding) of `bytes`.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The CSP sources (`'sha256-…'`) of the text of each `<tag>…</tag>` element in `html`
/// (elements written exactly `<tag>`, without attributes), or `'none'` if there are none.
fn hashes(html: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let body = &rest[i + open.len()..];
        let Some(j) = body.find(&close) else { break };
        out.push(format!(
            "'sha256-{}'",
            base64(&Sha256::digest(&body.as_bytes()[..j]))
        ));
        rest = &body[j + close.len()..];
    }
    if out.is_empty() {
        "'none'".into()
    } else {
        out.join(" ")
    }
}

/// The page's Content-Security-Policy.
pub(crate) fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'self'; script-src {}; style-src {}; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hashes(PAGE, "script"),
            hashes(PAGE, "style")
        )
    })
}

/// GET /
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        // RFC 4648's test vectors
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn hashes_each_element() {
        // sha256("") and sha256("abc")
        assert_eq!(
            hashes("<p><script></script><script>abc</script>", "script"),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=' \
             'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
        assert_eq!(hashes("<p>", "style"), "'none'");
    }

    #[test]
    fn page_is_self_contained() {
        // one inline script and one inline style, both hashed into the policy; nothing that
        // loads from elsewhere
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(PAGE.contains("<script>") && PAGE.contains("<style>"));
        for bad in [
            "src=\"http",
            "href=\"http",
            "@import",
            "url(",
            "<iframe",
            "innerHTML",
        ] {
            assert!(!PAGE.contains(bad), "the page contains {bad}");
        }
        let p = csp();
        assert_eq!(p.matches("'sha256-").count(), 2, "{p}");
        assert!(!p.contains("unsafe"), "{p}");
    }
}
