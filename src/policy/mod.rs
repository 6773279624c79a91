//! Step 1, which route? The route table (first match in file order), path normalisation so
//! that no spelling of a path escapes its route, the scopes a route requires and the source
//! of its rate-limit key.

mod keys;
mod path;
mod routes;
mod scopes;

pub use keys::{KeySource, LimitGroup};
pub use path::{has_encoded_separator, normalize_path, PathError};
pub use routes::{AuthMode, PathTemplate, Route, RouteTable};
pub use scopes::{MissingScopes, RequiredScopes};
