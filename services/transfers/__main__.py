from services.common.service import main, no_servicers

if __name__ == "__main__":
    main("transfers", no_servicers)
