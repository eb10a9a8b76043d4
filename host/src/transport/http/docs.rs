//! The `/docs` page (Swagger UI on the host's own assets, working with an API key). Knows
//! nothing of the OpenAPI document it shows.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The `/docs` page: Swagger UI on the host's own assets, plus what an API key needs. The page
/// loads without the key; the OpenAPI document behind it does not, so the page sends the key
/// it was given (asked for once on a 401, kept in the tab's sessionStorage) with every request,
/// the document's own included. The Authorize button sets it too. Every `/docs` answer (the
/// page and swagger-ui's assets) refuses to be framed, as the playground does: a page that
/// holds the key and sends requests must not be clickjacked from another site.
pub(crate) async fn docs_page(request: Request, next: Next) -> Response {
    let mut response = if matches!(request.uri().path(), "/docs" | "/docs/") {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            DOCS_PAGE,
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

const DOCS_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8" />
  <meta name="viewport" content="width=device-width, initial-scale=1" />
  <title>flowhost API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css" />
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
  const KEY = "flowhost-api-key";
  window.onload = () => {
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      persistAuthorization: true,
      requestInterceptor: (req) => {
        const key = sessionStorage.getItem(KEY);
        if (key && !req.headers.Authorization) req.headers.Authorization = "Bearer " + key;
        return req;
      },
      responseInterceptor: (res) => {
        if (res.status === 401 && res.url.endsWith("/openapi.json")) {
          const key = window.prompt("This flowhost needs its API key:");
          if (key) { sessionStorage.setItem(KEY, key.trim()); window.location.reload(); }
        }
        return res;
      },
      onComplete: () => {
        const key = sessionStorage.getItem(KEY);
        if (key) window.ui.preauthorizeApiKey("bearer", key);
      },
    });
  };
</script>
</body>
</html>
"##;
