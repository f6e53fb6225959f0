//! Containing a panic where one must not end the process (a reload, `bascule check`):
//! what it said, as text.

use std::any::Any;

/// Runs `f`; a panic becomes `Err` with its message (the panic hook has printed it too,
/// with where it happened).
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| message(p.as_ref()))
}

/// A panic's payload as text (`panic!` gives a `&str` or a `String`).
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_their_message() {
        assert_eq!(contain(|| 7), Ok(7));
        assert_eq!(
            contain(|| -> u8 { panic!("boom {}", 1) }),
            Err("boom 1".into())
        );
        assert_eq!(contain(|| -> u8 { panic!("static") }), Err("static".into()));
    }
}
