//! Raw bindings for `wit/party.wit`. Authors never use these directly.

wit_bindgen::generate!({
    path: "../wit",
    world: "party",
    pub_export_macro: true,
    export_macro_name: "__export_party_world",
    default_bindings_module: "partyhost_guest::__private::bindings",
});
