//! The one place the host side of the WIT contract is generated.
//!
//! `host` functions answer from memory and are synchronous; `io` functions
//! may wait on the network and are `async`, so a policy waiting on Redis
//! parks its fiber instead of blocking a tokio worker. Exports are called
//! with `call_async` for the same reason.

wasmtime::component::bindgen!({
    world: "policy-component",
    path: "../wit",
    imports: {
        "portcullis:gateway/io": async,
    },
    exports: { default: async },
});

pub use self::exports::portcullis::gateway::policy as guest;
pub use self::portcullis::gateway::types;

/// The same world with synchronous exports, for policies that do not import
/// `io`: nothing they call can wait, so they run without a fiber (cheaper
/// per call). Types and host interfaces are shared with the async bindings.
pub mod sync {
    wasmtime::component::bindgen!({
        world: "policy-component",
        path: "../wit",
        with: {
            "portcullis:gateway/types": super::portcullis::gateway::types,
            "portcullis:gateway/host": super::portcullis::gateway::host,
            "portcullis:gateway/io": super::portcullis::gateway::io,
        },
        require_store_data_send: true,
    });

    pub use self::exports::portcullis::gateway::policy as guest;
}
