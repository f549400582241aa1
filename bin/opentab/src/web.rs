//! The web UI's built assets (`web/dist`, made by `npm --prefix web run build`), served at `/`
//! by `opentab dev` and `opentab serve`. Unknown paths get `index.html` (the UI routes in the
//! browser); a missing build gets a page saying how to make it.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, Uri, header};

/// Where the built UI is looked for by default (relative to the working directory).
pub(crate) const DEFAULT_WEB_DIR: &str = "web/dist";

/// A fallback handler serving `dir`.
pub(crate) fn handler(dir: PathBuf) -> impl Fn(Uri) -> std::future::Ready<Response<Body>> + Clone + Send + 'static {
    move |uri: Uri| std::future::ready(serve(&dir, uri.path()))
}

fn serve(dir: &Path, path: &str) -> Response<Body> {
    let relative = path.trim_start_matches('/');
    // Only plain names: no `..`, no absolute paths, nothing outside `dir`.
    let safe = Path::new(relative).components().all(|c| matches!(c, Component::Normal(_)));
    let file = if relative.is_empty() || !safe { dir.join("index.html") } else { dir.join(relative) };
    let (file, cache) = match std::fs::metadata(&file) {
        Ok(meta) if meta.is_file() => (file, relative.starts_with("assets/")),
        _ => (dir.join("index.html"), false),
    };
    match std::fs::read(&file) {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
            // Vite puts a content hash in every asset's name: those never change.
            let cache = if cache { "public, max-age=31536000, immutable" } else { "no-cache" };
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            response
        }
        Err(_) => {
            let body = format!(
                "<!doctype html><title>opentab</title><h1>The web UI is not built</h1>\
                 <p>Looked in <code>{}</code>. Build it with <code>npm --prefix web ci && npm --prefix web run build</code> \
                 (scripts/dev.sh does), or pass <code>--web-dir</code>. The API is at <a href=\"/api/openapi.json\">/api</a>.</p>",
                dir.display()
            );
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            response
        }
    }
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_index_fallback_and_no_escape() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("index.html"), "<html>ui</html>")?;
        std::fs::create_dir(dir.path().join("assets"))?;
        std::fs::write(dir.path().join("assets/app-1a2b.js"), "console.log(1)")?;
        std::fs::write(dir.path().parent().ok_or("root")?.join("secret.txt"), "no")?;
        let asset = serve(dir.path(), "/assets/app-1a2b.js");
        assert_eq!(asset.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert!(asset.headers()[header::CACHE_CONTROL].to_str()?.contains("immutable"));
        let route = serve(dir.path(), "/keys/0xabc");
        assert_eq!(route.status(), StatusCode::OK);
        assert_eq!(route.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let escape = serve(dir.path(), "/../secret.txt");
        assert_eq!(escape.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8", "index, not the file outside");
        let missing = serve(&dir.path().join("nope"), "/");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        Ok(())
    }
}
