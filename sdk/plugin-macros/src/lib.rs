//! `#[filter]`, `#[transform]` and `#[partitioner]` for the Meridian plugin SDK. Each
//! accepts either a function or an `impl` of the matching SDK trait, and emits the ABI
//! exports (on wasm32 only). See the `meridian-plugin` crate for usage.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, spanned::Spanned, Item};

#[derive(Clone, Copy)]
enum Kind {
    Filter,
    Transform,
    Partitioner,
}

impl Kind {
    fn trait_name(self) -> &'static str {
        match self {
            Kind::Filter => "Filter",
            Kind::Transform => "Transform",
            Kind::Partitioner => "Partitioner",
        }
    }
}

/// Makes a filter plugin of `fn(&Record<'_>, &Params) -> Result<bool, Error>` or of an
/// `impl Filter for T`.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Filter, attr, item)
}

/// Makes a transform plugin of `fn(&Record<'_>, &Params) -> Result<Vec<OutputRecord>, Error>`
/// or of an `impl Transform for T`.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Transform, attr, item)
}

/// Makes a partitioner plugin of `fn(&Record<'_>, u32, &Params) -> Result<u32, Error>`
/// (the `u32` is the topic's partition count) or of an `impl Partitioner for T`.
#[proc_macro_attribute]
pub fn partitioner(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Partitioner, attr, item)
}

fn expand(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "this attribute takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as Item);
    let (kind_const, init, process) = match kind {
        Kind::Filter => (
            quote!(KIND_FILTER),
            quote!(init_filter),
            quote!(process_filter),
        ),
        Kind::Transform => (
            quote!(KIND_TRANSFORM),
            quote!(init_transform),
            quote!(process_transform),
        ),
        Kind::Partitioner => (
            quote!(KIND_PARTITIONER),
            quote!(init_partitioner),
            quote!(process_partitioner),
        ),
    };
    let export = |ty: proc_macro2::TokenStream| {
        quote! {
            ::meridian_plugin::__export!(
                #ty, ::meridian_plugin::__abi::#kind_const, #init, #process
            );
        }
    };
    match &item {
        Item::Impl(imp) => {
            let trait_ok = imp
                .trait_
                .as_ref()
                .and_then(|(_, path, _)| path.segments.last())
                .is_some_and(|s| s.ident == kind.trait_name());
            if !trait_ok {
                return syn::Error::new(
                    imp.span(),
                    format!(
                        "expected `impl {} for YourType`, or a function",
                        kind.trait_name()
                    ),
                )
                .to_compile_error()
                .into();
            }
            let ty = &imp.self_ty;
            let export = export(quote!(#ty));
            quote!(#item #export).into()
        }
        Item::Fn(f) => {
            let name = &f.sig.ident;
            let wrapper = format_ident!("__MeridianPlugin_{}", name);
            let trait_ident = format_ident!("{}", kind.trait_name());
            let method = match kind {
                Kind::Filter => quote! {
                    fn filter(&mut self, record: &::meridian_plugin::Record<'_>)
                        -> ::std::result::Result<bool, ::meridian_plugin::Error> {
                        #name(record, &self.params)
                    }
                },
                Kind::Transform => quote! {
                    fn transform(&mut self, record: &::meridian_plugin::Record<'_>)
                        -> ::std::result::Result<
                            ::std::vec::Vec<::meridian_plugin::OutputRecord>,
                            ::meridian_plugin::Error,
                        > {
                        #name(record, &self.params)
                    }
                },
                Kind::Partitioner => quote! {
                    fn partition(&mut self, record: &::meridian_plugin::Record<'_>, n_partitions: u32)
                        -> ::std::result::Result<u32, ::meridian_plugin::Error> {
                        #name(record, n_partitions, &self.params)
                    }
                },
            };
            let export = export(quote!(#wrapper));
            quote! {
                #item
                #[doc(hidden)]
                #[allow(non_camel_case_types, dead_code)]
                struct #wrapper {
                    params: ::meridian_plugin::Params,
                }
                impl ::meridian_plugin::#trait_ident for #wrapper {
                    fn new(params: &::meridian_plugin::Params)
                        -> ::std::result::Result<Self, ::meridian_plugin::Error> {
                        ::std::result::Result::Ok(#wrapper { params: params.clone() })
                    }
                    #method
                }
                #export
            }
            .into()
        }
        other => syn::Error::new(
            other.span(),
            format!(
                "#[{}] goes on a function or on `impl {} for YourType`",
                kind.trait_name().to_lowercase(),
                kind.trait_name()
            ),
        )
        .to_compile_error()
        .into(),
    }
}
