//! The `declare!` macro, which turns the one declaration of the config keys
//! (in `keys`) into the raw serde structs, the checked values, the
//! environment names and the rows of the reference table.
//!
//! A block of the declaration is a `section` (a fixed part of the config,
//! such as `limits.storage.redis`, whose keys may be set from the
//! environment) or an `entry` (the shape of each value of a per-id map,
//! such as `limits.budgets.by_user.<id>`, set in the file only):
//!
//! ```text
//! /// Doc of the raw struct.
//! section RawMemory at "storage.memory", expecting "a mapping of memory-store settings" => MemoryKeys {
//!     /// One line for the reference table.
//!     max_entries: Count<usize> = Count(DEFAULT_MAX_ENTRIES),
//! } and {
//!     /// Fields that are not keys: maps, lists and the sections below this one.
//!     by_api_key, by_user: IdMap<RawBudget> => FieldDoc::new("map", "`{}`", ".<id>");
//! };
//! ```
//!
//! A key is `name: Kind = value`: the kind (see `setting`) says how it is
//! read, checked and documented, and the value carries its default and
//! range. From it come a field `name: Option<Kind::Raw>` of the raw struct,
//! a field `name: Kind::Value` of the checked struct (filled by
//! `check_at`, whose errors name `<at>.<name>`), the environment name
//! `MERCATOR_LIMITS_<AT>_<NAME>` (sections only) and a row of the table.
//! The fields after `and` are ordinary serde fields; those with a
//! `FieldDoc` get a row too.

use super::setting::{EnvKind, Setting};

/// A key of a section, for the environment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key {
    pub name: &'static str,
    /// `None` for a key set in the file only.
    pub env: Option<EnvKind>,
}

/// One block of the declaration.
#[derive(Debug)]
pub(crate) struct Section {
    /// Its path below `limits` (`storage.redis`), or the placeholder path
    /// of an entry (`budgets.by_*.<id>`).
    pub at: &'static str,
    /// A section (true), or an entry of a per-id map.
    pub fixed: bool,
    pub keys: &'static [Key],
    pub rows: fn() -> Vec<Row>,
}

/// A row of the reference table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    /// The key, already in Markdown.
    pub key: String,
    pub ty: String,
    pub default: String,
    pub meaning: String,
}

impl Row {
    pub(crate) fn key(at: &str, name: &str, kind: &impl Setting, doc: &str) -> Row {
        Row {
            key: format!("`{}`", join(at, name)),
            ty: kind.type_doc(),
            default: kind.default_doc(),
            meaning: one_line(doc),
        }
    }

    /// The row of one or more fields that are not keys, which share it.
    pub(crate) fn field(at: &str, names: &[&str], doc: FieldDoc, text: &str) -> Row {
        let mut key = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let name = if i == 0 {
                    join(at, name)
                } else {
                    (*name).to_owned()
                };
                format!("`{name}`")
            })
            .collect::<Vec<_>>()
            .join(" / ");
        if !doc.suffix.is_empty() {
            key.push_str(&format!(" `{}`", doc.suffix));
        }
        Row {
            key,
            ty: doc.ty.to_owned(),
            default: doc.default.to_owned(),
            meaning: one_line(text),
        }
    }
}

/// The "Type" and "Default" of a field that is not a key, and what follows
/// its name in the table (`.<id>` for a per-id map).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FieldDoc {
    ty: &'static str,
    default: &'static str,
    suffix: &'static str,
}

impl FieldDoc {
    pub(crate) const fn new(
        ty: &'static str,
        default: &'static str,
        suffix: &'static str,
    ) -> FieldDoc {
        FieldDoc {
            ty,
            default,
            suffix,
        }
    }
}

/// `at.name`, or `name` at the root.
pub(crate) fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

/// The full path of a section: `limits.storage`, or `limits` for the root.
pub(crate) fn section_path(at: &str) -> String {
    join("limits", at).trim_end_matches('.').to_owned()
}

/// A doc comment's lines as one line.
fn one_line(doc: &str) -> String {
    doc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// See the module documentation.
macro_rules! declare {
    ($(
        $(#[doc = $sdoc:literal])*
        $kw:ident $raw:ident at $at:literal, expecting $expecting:literal => $checked:ident {
            $(
                $(#[doc = $kdoc:literal])+
                $key:ident: $kind:ty = $value:expr,
            )*
        }
        $(and {
            $(
                $(#[doc = $fdoc:literal])*
                $($field:ident),+ : $fty:ty $(=> $row:expr)?;
            )*
        })?;
    )*) => {
        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Default, serde::Deserialize)]
            #[serde(default, deny_unknown_fields, expecting = $expecting)]
            pub(crate) struct $raw {
                $(
                    $(#[doc = $kdoc])+
                    pub(crate) $key: Option<<$kind as $crate::config::setting::Setting>::Raw>,
                )*
                $($( $( pub(crate) $field: $fty, )+ )*)?
            }

            #[doc = concat!("The checked keys of [`", stringify!($raw), "`].")]
            #[derive(Debug)]
            pub(crate) struct $checked {
                $( pub(crate) $key: <$kind as $crate::config::setting::Setting>::Value, )*
            }

            impl $raw {
                /// The keys, for the environment.
                pub(crate) const KEYS: &'static [$crate::config::declare::Key] = &[$(
                    $crate::config::declare::Key {
                        name: stringify!($key),
                        env: $crate::config::declare::for_block!(
                            $kw, <$kind as $crate::config::setting::Setting>::ENV, None
                        ),
                    },
                )*];

                /// Checks every key; `at` is the full path of this block
                /// (`limits.storage.redis`, `limits.budgets.by_user.bob`).
                #[allow(unused_variables)] // A block without keys has nothing to name.
                pub(crate) fn check_at(&self, at: &str) -> $crate::config::error::Result<$checked> {
                    Ok($checked {$(
                        $key: {
                            let kind: $kind = $value;
                            $crate::config::setting::Setting::check(
                                &kind,
                                &format!("{at}.{}", stringify!($key)),
                                self.$key.as_ref(),
                            )?
                        },
                    )*})
                }

                /// The block's rows of the reference table.
                fn rows() -> Vec<$crate::config::declare::Row> {
                    let keys = vec![$({
                        let kind: $kind = $value;
                        $crate::config::declare::Row::key(
                            $at, stringify!($key), &kind, concat!($($kdoc),+),
                        )
                    }),*];
                    let fields: Vec<Option<$crate::config::declare::Row>> = vec![$($(
                        $crate::config::declare::field_row!(
                            $at, [$(stringify!($field)),+], concat!("" $(, $fdoc)*) $(, $row)?
                        ),
                    )*)?];
                    keys.into_iter().chain(fields.into_iter().flatten()).collect()
                }
            }

            $crate::config::declare::section_check!($kw $raw $checked $at);
        )*

        /// Every block, in the order of the reference table.
        pub(crate) const SECTIONS: &[$crate::config::declare::Section] = &[$(
            $crate::config::declare::Section {
                at: $at,
                fixed: $crate::config::declare::for_block!($kw, true, false),
                keys: $raw::KEYS,
                rows: $raw::rows,
            },
        )*];
    };
}

/// The first expression for a section, the second for an entry: an
/// entry's keys, below a per-id map, are set in the file only.
macro_rules! for_block {
    (section, $section:expr, $entry:expr) => {
        $section
    };
    (entry, $section:expr, $entry:expr) => {
        $entry
    };
}

/// A section, which has one place in the config, can check itself; an entry
/// is checked at each id's path.
macro_rules! section_check {
    (section $raw:ident $checked:ident $at:literal) => {
        impl $raw {
            /// Checks every key at this section's place.
            pub(crate) fn check(&self) -> $crate::config::error::Result<$checked> {
                self.check_at(&$crate::config::declare::section_path($at))
            }
        }
    };
    (entry $raw:ident $checked:ident $at:literal) => {};
}

/// The row of fields that have a `FieldDoc`; the others have none.
macro_rules! field_row {
    ($at:expr, $names:expr, $doc:expr) => {
        None
    };
    ($at:expr, $names:expr, $doc:expr, $row:expr) => {
        Some($crate::config::declare::Row::field(
            $at, &$names, $row, $doc,
        ))
    };
}

pub(crate) use {declare, field_row, for_block, section_check};
