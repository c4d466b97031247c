/* Stand-in for libcurl's header in the static musl builds (images/build, Containerfile).
 *
 * librdkafka's rdkafka_conf.c includes <curl/curl.h> under `#ifdef WITH_OAUTHBEARER_OIDC`, but its
 * generated config.h always defines that macro (to 0 without curl), so the include happens even
 * though rdkafka is built with WITH_CURL=0 and uses no curl symbol. musl-gcc does not search
 * /usr/include, where Debian's libcurl headers would be, so an empty header is all it needs. */
