extends RefCounted
## The addon's messages for every error code (`ERR_<CODE>`) and the
## sample's few words, in English and German.
##
## `install()` adds them to the TranslationServer (the addon's autoload
## does it at start): `tr(key_for(code))` then gives the player's language. They are Translation resources (`.tres`) so they
## load in every build without an import step; add a language by copying
## one, setting `locale` and translating the values, and listing it below.

const FILES: PackedStringArray = [
	"res://addons/trading_marketplace/translations/market_messages.en.tres",
	"res://addons/trading_marketplace/translations/market_messages.de.tres",
]


static var _installed := false


## The translation key of an error code: `"already_sold"` → `"ERR_ALREADY_SOLD"`.
static func key_for(code: String) -> String:
	return "ERR_" + code.to_upper()


## Adds the addon's translations once (later calls do nothing).
static func install() -> void:
	if _installed:
		return
	_installed = true
	for path in FILES:
		var translation: Translation = load(path)
		if translation == null:
			push_error("Trading Marketplace: cannot load " + path)
		else:
			TranslationServer.add_translation(translation)
