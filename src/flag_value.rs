//! Typed flag values: enums that derive `clap::ValueEnum` and serde with the same kebab-case
//! names, so a value is spelled the same on the command line, in a `--config` TOML file and in
//! a checkpoint's JSON. [`parser`] gives clap the one-line message the binaries print for a
//! bad value, and [`flag_value_display!`](crate::flag_value_display) makes `Display` print the
//! value's name.

use clap::ValueEnum;

/// The name of `value` (its flag spelling, and its serde name).
pub fn name<T: ValueEnum>(value: &T) -> String {
    value.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// "a, b or c": the names of all values of `T`, for messages.
pub fn choices<T: ValueEnum>() -> String {
    let names: Vec<String> = T::value_variants().iter().map(name).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A clap value parser for `T` whose error reads "unknown WHAT 'x' (expected a, b or c)".
/// Aliases declared with `#[value(alias = ...)]` are accepted too.
pub fn parser<T: ValueEnum + Clone + Send + Sync + 'static>(
    what: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        T::from_str(text, false).map_err(|_| format!("unknown {what} '{text}' (expected {})", choices::<T>()))
    }
}

/// Implements `Display` for typed flag values: the value's name, as [`name`] gives it.
#[macro_export]
macro_rules! flag_value_display {
    ($($t:ty),* $(,)?) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&$crate::flag_value::name(self))
            }
        }
    )*};
}

#[cfg(test)]
mod tests {
    use crate::engine::loss::Loss;
    use crate::engine::optim::OptimizerKind;

    /// The flag, serde (TOML, checkpoint JSON) and Display spellings agree, aliases parse,
    /// and a bad value gets the one-line message.
    #[test]
    fn names_agree_across_clap_serde_and_display() {
        for loss in [Loss::Crossentropy, Loss::BinaryCrossentropy, Loss::Mse] {
            let json = serde_json::to_string(&loss).unwrap();
            assert_eq!(json, format!("\"{loss}\""));
            assert_eq!(super::parser::<Loss>("loss")(&loss.to_string()), Ok(loss));
        }
        assert_eq!(super::parser::<Loss>("loss")("sparse-categorical-crossentropy"), Ok(Loss::Crossentropy));
        assert_eq!(serde_json::from_str::<Loss>("\"categorical-crossentropy\"").unwrap(), Loss::Crossentropy);
        assert_eq!(OptimizerKind::Adam.to_string(), "adam");
        let err = super::parser::<Loss>("loss")("hinge").unwrap_err();
        assert_eq!(err, "unknown loss 'hinge' (expected crossentropy, binary-crossentropy or mse)");
    }
}
