//! Step 2 with DPoP (RFC 9449): which scheme a route reads, the mode for a verified token, the
//! proof checks of one request (`auth::dpop` does the JWS work), the replay check (in process,
//! or shared through the limiter's Redis), and the challenge a refusal is answered with.
//! Runs on every request, also when the token came from the verified-token cache: the binding
//! is in the principal, the proof is per request.

use crate::auth::dpop::{self as proof, DpopError, Expected};
use crate::auth::{AuthError, Principal};
use crate::config::DpopMode;
use crate::metrics::Metrics;
use crate::policy::{normalize_origin, normalize_path, Route};
use crate::state::Snapshot;

use super::{Admission, Effects, Reject, RequestView, Step, Trace};

const DPOP: &str = "dpop";

/// Whether `Authorization: DPoP` is read on this route: its own `dpop`, else whether any issuer
/// it accepts has DPoP on.
pub(super) fn scheme_accepted(snap: &Snapshot, route: &Route) -> bool {
    match route.dpop {
        Some(m) => m != DpopMode::Off,
        None => snap.auth.issuers().iter().any(|i| {
            i.cfg.dpop != DpopMode::Off
                && route
                    .issuers
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| n == i.name()))
        }),
    }
}

/// The mode for a token of `p`'s issuer on this route.
pub(super) fn mode(snap: &Snapshot, route: &Route, p: &Principal) -> DpopMode {
    route.dpop.unwrap_or_else(|| {
        snap.auth
            .issuers()
            .get(p.issuer_index)
            .map_or(DpopMode::default(), |i| i.cfg.dpop)
    })
}

/// The refusal for an authentication error: a `DPoP` challenge when the request used the DPoP
/// scheme, the error is DPoP's own, or the route requires DPoP; the Bearer one otherwise
/// (and always for a DPoP credential where DPoP is off: RFC 6750 §3.1, no credentials).
pub(super) fn reject(snap: &Snapshot, route: &Route, via_dpop: bool, e: AuthError) -> Reject {
    let required = route.dpop == Some(DpopMode::Required);
    let dpop_error = matches!(
        e,
        AuthError::Dpop(_) | AuthError::DpopRequired | AuthError::DpopUnbound
    );
    let challenge = match e {
        AuthError::MissingToken => required,
        _ => via_dpop || dpop_error || required,
    };
    if !challenge {
        return Reject::Auth(e);
    }
    let algs = snap
        .config
        .server
        .dpop
        .algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    Reject::Dpop { error: e, algs }
}

/// The checks of the proof of a DPoP request whose token verified as `p` (RFC 9449 §4.3, §7.1):
/// one `DPoP` header, the proof itself, its `htm`/`htu`/`iat`/`ath`, the token's `cnf.jkt`,
/// then its `jti` (recorded only with [`Effects::Count`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn check<T: Trace>(
    snap: &Snapshot,
    metrics: &Metrics,
    v: &RequestView<'_>,
    adm: &Admission,
    token: &str,
    p: &Principal,
    effects: Effects,
    trace: &mut T,
) -> Result<(), AuthError> {
    let htu = expected_htu(snap, v, adm);
    let result = verify(snap, v, token, p, htu.as_deref(), effects).await;
    let label = match &result {
        Ok(()) => "ok",
        Err(e) => e.reason(),
    };
    if effects == Effects::Count {
        metrics.dpop_proofs.with_label_values(&[label]).inc();
    }
    trace.step(|| Step::Dpop {
        htu: htu.clone(),
        result: label,
    });
    result
}

async fn verify(
    snap: &Snapshot,
    v: &RequestView<'_>,
    token: &str,
    p: &Principal,
    htu: Option<&str>,
    effects: Effects,
) -> Result<(), AuthError> {
    let jkt = p
        .binding
        .as_deref()
        .and_then(|b| b.jkt.as_deref())
        .ok_or(AuthError::DpopUnbound)?;
    let mut headers = v.headers.get_all(DPOP).iter();
    let value = match (headers.next(), headers.next()) {
        (None, _) => return Err(AuthError::Dpop(DpopError::Missing)),
        (Some(_), Some(_)) => return Err(AuthError::Dpop(DpopError::Multiple)),
        (Some(h), None) => h
            .to_str()
            .map_err(|_| AuthError::Dpop(DpopError::Malformed("DPoP header is not ASCII")))?,
    };
    let settings = &snap.config.server.dpop;
    let proof =
        proof::parse_and_verify(value.trim(), &settings.algorithms).map_err(AuthError::Dpop)?;
    let want = Expected {
        method: v.method.as_str(),
        htu: htu.ok_or(AuthError::Dpop(DpopError::Htu))?,
        now: crate::auth::jwt::now_secs() as i64,
        max_age: settings.max_age,
        leeway: settings.leeway,
        token,
        jkt,
    };
    proof::check_request(&proof, &want, |path| {
        normalize_path(path).ok().map(|p| p.into_owned())
    })
    .map_err(AuthError::Dpop)?;
    // Last: a proof refused for another reason is not remembered.
    let window = settings.replay_window();
    let peek = effects == Effects::LookOnly;
    let shared = match snap.limiter.backend_name() {
        "redis" => snap
            .limiter
            .first_use(&proof::shared_id(jkt, &proof.jti), window, peek)
            .await
            .map_err(|_| AuthError::ReplayCacheUnavailable)?,
        _ => None,
    };
    let fresh = match shared {
        Some(fresh) => fresh,
        None if peek => !snap.dpop_replay.seen(jkt, &proof.jti),
        None => snap.dpop_replay.first_use(jkt, &proof.jti),
    };
    if !fresh {
        return Err(AuthError::Dpop(DpopError::Replay));
    }
    Ok(())
}

/// `scheme://authority/path` the proof's `htu` must name: `[server] public_url` when set, else
/// the listener's scheme (or a trusted `X-Forwarded-Proto`) and the absolute-form authority or
/// the one `Host`; the routed (normalised) path. `None` when there is no authority to use.
fn expected_htu(snap: &Snapshot, v: &RequestView<'_>, adm: &Admission) -> Option<String> {
    let origin = match &snap.config.server.public_origin {
        Some(o) => o.clone(),
        None => {
            let authority = match &adm.target_authority {
                Some(a) => a.as_str(),
                None => {
                    let mut hosts = v.headers.get_all(http::header::HOST).iter();
                    match (hosts.next(), hosts.next()) {
                        (Some(h), None) => h.to_str().ok()?,
                        // HTTP/2 without `Host`: its `:authority`.
                        (None, _) => v.uri.authority()?.as_str(),
                        _ => return None,
                    }
                }
            };
            normalize_origin(if adm.https { "https" } else { "http" }, authority.trim())?
        }
    };
    let path = adm.rewritten_path.as_deref().unwrap_or(v.uri.path());
    Some(format!("{origin}{path}"))
}
