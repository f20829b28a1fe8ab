//! `--staticdir`: files over plain HTTP, served by tower-http's `ServeDir` (Content-Type,
//! HEAD, Last-Modified and conditional requests, ranges, index.html for a directory).
//!
//! `ServeDir` refuses `..` in paths; what it cannot see is a symlink inside the directory that
//! leads outside it. Before handing a request over, the path is resolved here and must stay
//! inside the (canonical) directory, as websocketd 0.5 checks.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use tower_http::services::ServeDir;

use crate::http::Body;

/// Whether the file a URL path names, if it exists, lies inside `root` once every symlink is
/// resolved. Missing files are "inside": `ServeDir` answers them 404.
fn stays_inside(root: &Path, decoded: &str) -> bool {
    let mut path = PathBuf::from(root);
    for part in Path::new(decoded.trim_start_matches('/')).components() {
        match part {
            Component::Normal(p) => path.push(p),
            Component::CurDir => {}
            // `ServeDir` refuses these too; refuse them here rather than reason about them.
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    match std::fs::canonicalize(&path) {
        Ok(real) => real.starts_with(root),
        Err(_) => true,
    }
}

/// Serves a request from `root` (canonical); None for a missing file or a path that escapes.
pub async fn serve<B>(root: &Path, req: Request<B>) -> Option<Response<Body>> {
    let decoded = crate::cgi_env::percent_decode(req.uri().path());
    if !stays_inside(root, &decoded) {
        return None;
    }
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    let resp = match ServeDir::new(root)
        .append_index_html_on_directories(true)
        .try_call(req)
        .await
    {
        Ok(resp) => resp,
        // Without a fallback service, ServeDir reports a missing file as an error.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            let status = if e.kind() == std::io::ErrorKind::PermissionDenied {
                StatusCode::FORBIDDEN
            } else {
                crate::error!("http", "STATIC: {e}");
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let mut resp = Response::new(crate::http::full(Bytes::new()));
            *resp.status_mut() = status;
            return Some(resp);
        }
    };
    Some(resp.map(|body| body.map_err(std::io::Error::other).boxed_unsync()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_components_never_stay_inside() {
        let root = std::env::temp_dir();
        assert!(!stays_inside(&root, "/../etc/passwd"));
        assert!(!stays_inside(&root, "/a/../../etc/passwd"));
        assert!(stays_inside(&root, "/no-such-file-here"));
    }
}
