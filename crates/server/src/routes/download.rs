//! Serving stored files with HTTP range requests (RFC 9110 §14): `206 Partial Content` for one
//! satisfiable range, `416 Range Not Satisfiable` with the size for one that is not, `If-Range`
//! against the strong ETag (the file's sha256), so an interrupted download resumes exactly where it
//! stopped and a changed file restarts from the beginning.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_store::StoredObject;

use crate::error::ApiError;
use crate::storage::{Storage, StorageError};

/// What a `Range` header asks for, against a file of known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: send the whole file.
    Full,
    /// One satisfiable range, `start..end` (end exclusive).
    Partial(u64, u64),
    /// A range that lies outside the file.
    Unsatisfiable,
}

/// Interprets `Range` (and `If-Range`) for a file of `size` bytes with strong ETag `etag`.
///
/// Several ranges and malformed headers are answered with the whole file, as the RFC allows;
/// an `If-Range` that does not match the current ETag also means the whole file.
pub fn range_request(headers: &HeaderMap, size: u64, etag: &str) -> RangeRequest {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeRequest::Full;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        if if_range.to_str().ok() != Some(etag) {
            return RangeRequest::Full;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => RangeRequest::Partial(size.saturating_sub(n), size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // `bytes=A-`: from A to the end.
        (false, true) => match parse(first) {
            Some(a) if a < size => RangeRequest::Partial(a, size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        // `bytes=A-B`, inclusive.
        (false, false) => match (parse(first), parse(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a < size {
                    RangeRequest::Partial(a, b.saturating_add(1).min(size))
                } else {
                    RangeRequest::Unsatisfiable
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// Sends `object` (or the range the request asks for) as a download named `filename`.
pub async fn serve(
    storage: &Storage,
    object: &StoredObject,
    headers: &HeaderMap,
    filename: &str,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", object.info.sha256);
    let size = object.info.size;
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        })
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let request = range_request(headers, size, &etag);
    if request == RangeRequest::Unsatisfiable {
        let mut response = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the requested range lies outside the file's {size} bytes"),
        )
        .into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes */{size}")),
        );
        headers.insert(header::ETAG, header_value(&etag));
        return Ok(response);
    }
    let range = match request {
        RangeRequest::Partial(start, end) => Some(start..end),
        _ => None,
    };
    let read = storage
        .read(&object.key, range.clone())
        .await
        .map_err(storage_error)?;
    if read.size != size {
        return Err(ApiError::internal(format!(
            "object {} is {} bytes, its record says {size}",
            object.key, read.size
        )));
    }
    let mut response = Response::new(Body::from_stream(read.stream));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let headers = response.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ETAG, header_value(&etag));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(&format!(
            "attachment; filename=\"{}\"",
            filename.replace(['"', '\\', '\r', '\n'], "_")
        )),
    );
    match range {
        Some(range) => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {}-{}/{size}", range.start, range.end - 1)),
            );
            headers.insert(
                header::CONTENT_LENGTH,
                header_value(&(range.end - range.start).to_string()),
            );
        }
        None => {
            headers.insert(header::CONTENT_LENGTH, header_value(&size.to_string()));
        }
    }
    Ok(response)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Maps a storage failure to the caller's error: a missing object is the server's fault (the row
/// says it exists), an unreachable store is temporary.
pub fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        ),
        StorageError::Body(_) => ApiError::bad_request(e.to_string()),
        StorageError::Backend(_) => {
            tracing::warn!(error = %e, "artifact storage failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "artifact storage is unavailable; retry later",
            )
        }
        StorageError::NotFound(_) | StorageError::Config(_) => ApiError::internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(range: &str, if_range: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        if let Some(tag) = if_range {
            headers.insert(header::IF_RANGE, HeaderValue::from_str(tag).unwrap());
        }
        headers
    }

    #[test]
    fn range_headers_are_read_as_the_rfc_says() {
        use RangeRequest::*;
        let tag = "\"abc\"";
        let cases = [
            ("bytes=0-99", Partial(0, 100)),
            ("bytes=100-", Partial(100, 1000)),
            ("bytes=-10", Partial(990, 1000)),
            ("bytes=-5000", Partial(0, 1000)),
            ("bytes=990-5000", Partial(990, 1000)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=2000-3000", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=5-2", Full),
            ("bytes=0-1,5-6", Full),
            ("items=0-1", Full),
            ("bytes=x-", Full),
        ];
        for (range, expected) in cases {
            assert_eq!(
                range_request(&with_range(range, None), 1000, tag),
                expected,
                "{range}"
            );
        }
    }

    #[test]
    fn a_stale_if_range_gets_the_whole_file() {
        let tag = "\"abc\"";
        assert_eq!(
            range_request(&with_range("bytes=10-", Some("\"old\"")), 100, tag),
            RangeRequest::Full
        );
        assert_eq!(
            range_request(&with_range("bytes=10-", Some(tag)), 100, tag),
            RangeRequest::Partial(10, 100)
        );
    }
}
