//! Step 1, which route? The route table (first match in file order), path normalisation so
//! that no spelling of a path escapes its route, the scopes a route requires and the source
//! of its rate-limit key.

mod keys;
mod path;
mod routes;
mod scopes;

pub(crate) use keys::{KeySource, LimitGroup};
// Public for the fuzz targets (the `fuzzing` re-exports) and the config types.
pub use path::{has_encoded_separator, normalize_path};
pub use routes::{AuthMode, RouteMode, RouteTable};
pub(crate) use routes::{PathTemplate, Route};
pub(crate) use scopes::{MissingScopes, RequiredScopes};
