# bash completion for migd(8)                                    -*- shell-script -*-
# Installed as /usr/share/bash-completion/completions/migd (loaded on demand by bash-completion).

_migd()
{
    local cur prev words cword split
    _init_completion -s || return

    local verbs="status profiles validate plan apply check export boot watch import init"
    local global_opts="-c --config --simulate --sim-state -v --verbose -q --quiet --version -h --help"
    local sims="dgx-a100 dgx-h100 dgx-h200 dgx-b200 hgx-b300 gb200-tray rtx-pro-server a100-40gb a100-80gb a30 h100-80gb h100-94gb h200 h200-nvl h800 h20 gh200-96gb gh200-144gb b200 gb200 b300 gb300 a800-80gb a800-40gb rtx-pro-6000"

    case $prev in
        -c | --config)
            _filedir toml
            return
            ;;
        --sim-state)
            _filedir json
            return
            ;;
        --simulate)
            # MODEL[:COUNT],...: complete the part after the last comma
            local head=""
            [[ $cur == *,* ]] && head=${cur%,*},
            COMPREPLY=($(compgen -P "$head" -W "$sims" -- "${cur##*,}"))
            compopt -o nospace 2>/dev/null
            return
            ;;
        --format)
            COMPREPLY=($(compgen -W "toml slurm" -- "$cur"))
            return
            ;;
        --host)
            _known_hosts_real -- "$cur"
            return
            ;;
        --from)
            COMPREPLY=($(compgen -W "mig-parted" -- "$cur"))
            return
            ;;
        -o | --output)
            _filedir toml
            return
            ;;
        --name)
            return
            ;;
        --version | -h | --help)
            return
            ;;
    esac
    $split && return

    # The verb: the first word that is not a global option or its argument.
    local i verb=""
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            -c | --config | --simulate | --sim-state) ((i++)) ;;
            -*) ;;
            *)
                verb=${words[i]}
                break
                ;;
        esac
    done

    if [[ -z $verb ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$global_opts" -- "$cur"))
            [[ ${COMPREPLY-} == *= ]] && compopt -o nospace
        else
            COMPREPLY=($(compgen -W "$verbs" -- "$cur"))
        fi
        return
    fi

    local opts="-h --help"
    case $verb in
        status | profiles | check) opts+=" --json" ;;
        apply) opts+=" --dry-run --stop-clients" ;;
        export) opts+=" --format --declared" ;;
        validate | plan) opts+=" --host" ;;
        import) opts+=" --from --name" ;;
        init) opts+=" -o --output" ;;
    esac
    [[ $cur == -* || -z $cur ]] && COMPREPLY=($(compgen -W "$opts" -- "$cur"))
} &&
    complete -F _migd migd

# ex: filetype=sh
