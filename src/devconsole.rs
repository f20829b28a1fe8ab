//! `--devconsole`: an interactive page, embedded in the binary, for trying the WebSocket
//! endpoint from a browser; served for every plain HTTP request.
//!
//! The page reflects one thing from the request, the endpoint's ws:// URL, and only
//! HTML-escaped (websocketd 0.4.1 had a reflected XSS there). Everything the page shows at run
//! time it inserts as text.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::config::Config;
use crate::http::{self, Body};

const PAGE: &str = include_str!("assets/devconsole.html");

/// `s` with the five HTML-special characters escaped, for text and quoted attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for a request whose WebSocket URL is `ws_url`.
pub fn page(config: &Config, ws_url: &str) -> Response<Body> {
    crate::access!("http", "DEVCONSOLE");
    let shown = crate::lenient::restore(ws_url);
    let body = PAGE.replace("{{addr}}", &escape_html(&shown));
    let mut resp = Response::new(http::full(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    http::add_headers(h, &config.headers);
    http::add_headers(h, &config.headers_http);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_the_url_is_escaped() {
        assert_eq!(
            escape_html(r#"ws://h/"><script>alert('x')</script>&"#),
            "ws://h/&#34;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
    }

    #[test]
    fn the_page_has_one_placeholder_for_the_address() {
        assert_eq!(PAGE.matches("{{addr}}").count(), 1);
    }
}
