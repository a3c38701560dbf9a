// Package dashboard serves a station's live view over HTTP: one
// self-contained page (inline CSS and JavaScript, no external assets) kept
// current by server-sent events, and a JSON status endpoint for scripts.
//
//	GET /         the page
//	GET /status   station.Status as JSON
//	GET /events   text/event-stream: "status" events carrying station.Status
package dashboard
