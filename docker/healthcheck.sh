#!/bin/sh
# The image's HEALTHCHECK (/opt/ssmserve/bin/ssm-healthcheck): asks
# grpc.health.v1 about the whole server with `ssm_client health`, in
# plaintext, where the server answers that:
#   - its health-only port, when it has one: --health_address among
#     ssm_server's arguments, or FLAGS_health_address in the environment
#     (arguments win, as they do for the server); a host of 0.0.0.0 or [::]
#     is asked on loopback;
#   - else 127.0.0.1:50051, the image's gRPC port.
# A server serving TLS (--tls_cert) answers plaintext only on its health
# port, so with TLS give it a --health_address, or this check fails.
# Exit 0 iff SERVING (NOT_SERVING while draining).
set -eu

address=${FLAGS_health_address:-}

# The server's own arguments, from /proc (it is PID 1 with the image's
# exec-form entrypoint; another PID under an init such as --init).
for cmdline in /proc/[0-9]*/cmdline; do
  first=$(tr '\0' '\n' <"$cmdline" 2>/dev/null | head -n 1) || continue
  case $first in
    */ssm_server | ssm_server) ;;
    *) continue ;;
  esac
  # Abseil takes --flag=value, -flag=value and --flag value; the last wins.
  found=$(tr '\0' '\n' <"$cmdline" 2>/dev/null | {
    value=''
    next_is_value=false
    while IFS= read -r arg; do
      if $next_is_value; then
        value=$arg
        next_is_value=false
        continue
      fi
      case $arg in
        --health_address=* | -health_address=*) value=${arg#*=} ;;
        --health_address | -health_address) next_is_value=true ;;
      esac
    done
    printf '%s' "$value"
  })
  if [ -n "$found" ]; then address=$found; fi
  break
done

case $address in
  "") address=127.0.0.1:50051 ;;
  0.0.0.0:* | :*) address=127.0.0.1:${address##*:} ;;
  "[::]:"*) address="[::1]:${address##*:}" ;;
esac

exec /opt/ssmserve/bin/ssm_client --address="$address" --deadline=2s health
