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
