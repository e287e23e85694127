//! The capability machinery: [`capabilities!`] turns one definition per capability into
//!
//! * the `#[repr(C)]` table with its id, version and name ([`Table`]), checked by layout when a
//!   library is opened (`check_known`);
//! * a marker type `caps::Name` through which `#[derive(Plugin)]` finds the table for a listed
//!   capability, so the derive knows no capability by name ([`Entry`]);
//! * the plugin-side glue: one `extern "C"` function per hook, generic over the plugin type,
//!   with its panic guard ([`glue::Guarded`]);
//! * the host-side typed handle: one method per hook on [`Cap<Table>`](super::Cap), whose result
//!   keeps the plugin's code mapped for as long as it can call into it ([`Returned`]);
//! * the hook names the host counts metrics under ([`Capability::HOOKS`]).
//!
//! A definition reads:
//!
//! ```text
//! /// docs
//! TableV1 = (id, version) Marker: sdk::Trait [field: Type = value] {  // data fields come first
//!     /// docs
//!     pub fn hook(arg: ArgType, ...) -> Ret as "metric_name" => |plugin| body;
//! }
//! ```
//!
//! `body` runs inside the plugin with `plugin: &'static P` and the arguments in scope; `Ret` is
//! what crosses back: a plain value, or an [`RFuture`](super::RFuture) / [`RStream`](super::RStream)
//! for async hooks. Everything else follows.

/// See the module docs.
macro_rules! capabilities {
    (dollar = $d:tt; $(
        $(#[$meta:meta])*
        $table:ident = ($id:expr, $version:literal) $marker:ident : $bound:path
        $([ $( $(#[$dmeta:meta])* $dfield:ident : $dty:ty = $dval:expr ),* $(,)? ])?
        {
            $(
                $(#[$hmeta:meta])*
                $vis:vis fn $hook:ident ( $($arg:ident : $aty:ty),* $(,)? ) -> $ret:ty as $metric:literal
                    => |$p:ident| $body:expr;
            )*
        }
    )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(StableAbi, Clone, Copy, Debug)]
            pub struct $table {
                $($( $(#[$dmeta])* pub $dfield: $dty, )*)?
                $( $(#[$hmeta])* pub $hook: extern "C" fn(InstancePtr, $($aty),*) -> $ret, )*
            }

            impl $crate::ffi::Table for $table {
                const ID: u32 = $id;
                const VERSION: u32 = $version;
                const NAME: &'static str = stringify!($marker);
            }

            impl $crate::ffi::Capability for $table {
                const HOOKS: &'static [&'static str] = &[$($metric),*];
            }

            #[allow(non_upper_case_globals)]
            impl $table {
                $(
                    #[doc = concat!("The index of `", stringify!($hook), "` in [`Capability::HOOKS`](crate::ffi::Capability::HOOKS).")]
                    pub const $hook: usize = $crate::ffi::define::position(
                        <$table as $crate::ffi::Capability>::HOOKS,
                        $metric,
                    );
                )*
            }

            impl $crate::ffi::Cap<$table> {
                $(
                    $(#[$hmeta])*
                    #[inline]
                    $vis fn $hook(&self, $($arg: $aty),*) -> <$ret as $crate::ffi::define::Returned>::Host {
                        $crate::ffi::define::Returned::hold((self.table().$hook)(self.ptr(), $($arg),*), self.instance())
                    }
                )*
            }

            const _: () = {
                $(
                    // Safe to call only from a `Cap` (the table is reachable from nowhere else),
                    // which passes its own live instance of `P`. Released tables are frozen with
                    // safe `extern "C" fn` fields: abi_stable compares `unsafe` qualifiers.
                    extern "C" fn $hook<P: $bound>(instance: InstancePtr, $($arg: $aty),*) -> $ret {
                        // SAFETY: only a `Cap` of this table calls this, with the instance the
                        // table belongs to, which it holds alive.
                        let boxed = unsafe { $crate::ffi::glue::boxed::<'static, P>(instance) };
                        $crate::ffi::glue::guarded::<P, $ret>(boxed, stringify!($hook), |$p: &'static P| $body)
                    }
                )*

                impl<P: $bound> $crate::ffi::define::Entry<P> for caps::$marker {
                    const ENTRY: TableEntry = TableEntry::new(const {
                        &$table { $($($dfield: $dval,)*)? $($hook: $hook::<P>,)* }
                    });
                }

                impl $crate::ffi::define::Marker for caps::$marker {
                    type Table = $table;
                }
            };
        )*

        /// The table entries of every capability type `$ty` implements, found by autoref
        /// specialization in the plugin crate (where `$ty` is concrete): `#[derive(Plugin)]`
        /// exports what a plugin implements, listed or not.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __implemented_capabilities {
            ($d ty:ty) => {
                [$(
                    (&$crate::ffi::define::Probe::<$d ty, $crate::ffi::caps::$marker>::NEW).entry(),
                )*]
            };
        }

        /// One marker type per capability, named as plugin authors list it in
        /// `#[plugin(capabilities(...))]`.
        pub mod caps {
            $(
                #[doc = concat!("The `", stringify!($marker), "` capability ([`", stringify!($table), "`](super::", stringify!($table), ")).")]
                pub struct $marker;
            )*
        }

        /// Checks `entry` if it is a capability table this host knows: its name, or the layout
        /// mismatch. `None` for ids or versions this host does not know.
        pub(crate) fn check_known(entry: &TableEntry) -> Option<Result<&'static str, LayoutError>> {
            $(
                if entry.id == <$table as $crate::ffi::Table>::ID && entry.version == <$table as $crate::ffi::Table>::VERSION {
                    return Some(
                        abi_stable::abi_stability::abi_checking::check_layout_compatibility(
                            <$table as StableAbi>::LAYOUT,
                            entry.layout,
                        )
                        .map(|()| stringify!($marker))
                        .map_err(|errors| LayoutError {
                            table: stringify!($marker),
                            detail: summarize_layout_errors(&errors.to_string()),
                        }),
                    );
                }
            )*
            None
        }

        /// The name of a capability this host knows by id (any version), for errors about
        /// versions it does not know.
        pub(crate) fn known_name(id: u32) -> Option<(&'static str, u32)> {
            $(
                if id == <$table as $crate::ffi::Table>::ID {
                    return Some((stringify!($marker), <$table as $crate::ffi::Table>::VERSION));
                }
            )*
            None
        }
    };
}

pub(crate) use capabilities;

use std::sync::Arc;

use super::{Instance, RFuture, RStream, TableEntry};

/// The table entry for capability marker `Self`, implemented by plugin type `P`: what
/// `#[derive(Plugin)]` puts in the plugin's metadata for each listed capability.
pub trait Entry<P> {
    const ENTRY: TableEntry;
}

/// Finds out, for a concrete plugin type `P`, whether it implements capability `M`. Called as
/// `(&Probe::<P, M>::NEW).entry()`: method resolution tries receivers `&Probe` first, where
/// [`Implemented`] applies when `M: Entry<P>`, then `&&Probe`, where [`NotImplemented`] always
/// applies.
pub struct Probe<P, M>(std::marker::PhantomData<(fn() -> P, M)>);

impl<P, M> Probe<P, M> {
    pub const NEW: Probe<P, M> = Probe(std::marker::PhantomData);
}

pub trait Implemented {
    fn entry(&self) -> Option<TableEntry>;
}

impl<P, M: Entry<P>> Implemented for Probe<P, M> {
    fn entry(&self) -> Option<TableEntry> {
        Some(M::ENTRY)
    }
}

pub trait NotImplemented {
    fn entry(&self) -> Option<TableEntry>;
}

impl<P, M> NotImplemented for &Probe<P, M> {
    fn entry(&self) -> Option<TableEntry> {
        None
    }
}

/// The entries a plugin exports, from the probe of every capability: those it implements,
/// without `Requirements` when it requires nothing (so that older hosts see nothing new).
pub fn exported_entries<P: super::glue::Exported>(
    probed: impl IntoIterator<Item = Option<TableEntry>>,
) -> Vec<TableEntry> {
    probed.into_iter().flatten().filter(|e| e.id != super::cap::REQUIREMENTS || !P::REQUIRED.is_empty()).collect()
}

/// A capability marker's table.
pub trait Marker {
    type Table: super::Capability;
}

/// The index of `name` in `hooks`, at compile time.
pub const fn position(hooks: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < hooks.len() {
        let (a, b) = (hooks[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("hook name not in the capability's HOOKS")
}

/// What a hook returns to the host, and what the host gets: plain values as they are; futures
/// and streams wrapped with the plugin instance, so that the plugin's code stays mapped while
/// the host can still poll or drop them.
pub trait Returned {
    type Host;
    fn hold(self, instance: &Arc<Instance>) -> Self::Host;
}

macro_rules! returned_as_is {
    ($($ty:ty),* $(,)?) => {$(
        impl $crate::ffi::define::Returned for $ty {
            type Host = Self;
            #[inline(always)]
            fn hold(self, _: &std::sync::Arc<$crate::ffi::Instance>) -> Self {
                self
            }
        }
    )*};
}
pub(crate) use returned_as_is;

impl<T> Returned for RFuture<T> {
    type Host = InstanceFuture<T>;
    fn hold(self, instance: &Arc<Instance>) -> InstanceFuture<T> {
        InstanceFuture { future: self, _instance: instance.clone() }
    }
}

impl<T> Returned for RStream<T> {
    type Host = InstanceStream<T>;
    fn hold(self, instance: &Arc<Instance>) -> InstanceStream<T> {
        InstanceStream { stream: self, _instance: instance.clone() }
    }
}

/// A plugin's future, holding its instance (and so its library) until it is dropped. Dropping
/// it before it completes cancels it inside the plugin.
pub struct InstanceFuture<T> {
    // Declared first: dropped before the instance.
    future: RFuture<T>,
    _instance: Arc<Instance>,
}

impl<T> std::future::Future for InstanceFuture<T> {
    type Output = T;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        std::pin::Pin::new(&mut self.future).poll(cx)
    }
}

/// A plugin's stream, holding its instance until it is dropped.
pub struct InstanceStream<T> {
    stream: RStream<T>,
    _instance: Arc<Instance>,
}

impl<T> InstanceStream<T> {
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.stream.poll_next(cx)
    }

    /// Waits for the next item, `None` at the end.
    pub fn next_item(&mut self) -> impl std::future::Future<Output = Option<T>> + '_ {
        self.stream.next_item()
    }
}
